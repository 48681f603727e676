"""Per-method hyperparameter presets: 001 Table 16's tuned β, ζ-decay and ρ.

001 tunes the UCB/LCB width β, the anchor decay ζ-decay and the replay factor ρ separately
for each of its methods and for each downstream target (DPO or reward modelling). A run's
``preset`` (default ``paper-dpo``) fills those three fields from the table for its method
whenever the config or the flags leave them unset; a value the user gives always wins, and
``preset: none`` keeps the plain defaults (β 1, ζ-decay 0.99, ρ 1000). Methods the table
does not cover get nothing from a preset. The resolved values are what the run stores, so a
later change of this table never changes a resumed run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NO_PRESET = "none"
DEFAULT_PRESET = "paper-dpo"


@dataclass(frozen=True)
class MethodSettings:
    """One row of 001 Table 16 for one target."""

    beta: float
    zeta_decay: float
    rho: int

    def as_overrides(self) -> dict[str, Any]:
        """Dotted config keys -> values."""
        return {"beta": self.beta, "enn.zeta_decay": self.zeta_decay, "enn.rho": self.rho}


# 001 Table 16: (β, ζ-decay, ρ) per method, tuned for DPO and for reward modelling.
PRESETS: dict[str, dict[str, MethodSettings]] = {
    "paper-dpo": {
        "infomax": MethodSettings(2.0, 0.99, 1000),
        "dts": MethodSettings(1.0, 0.99, 1000),
        "maxminlcb": MethodSettings(1.0, 0.99, 1000),
        "drts": MethodSettings(1.0, 0.999, 1000),
        "deltaucb": MethodSettings(2.0, 0.999, 1000),
    },
    "paper-rm": {
        "infomax": MethodSettings(2.0, 0.99, 1000),
        "dts": MethodSettings(1.0, 0.999, 1000),
        "maxminlcb": MethodSettings(2.0, 0.9, 1000),
        "drts": MethodSettings(1.0, 0.9, 1000),
        "deltaucb": MethodSettings(1.0, 0.99, 100),
    },
}
PRESET_NAMES = (*PRESETS, NO_PRESET)


def preset_settings(preset: str, method: str) -> MethodSettings | None:
    """Table 16's row for ``method`` under ``preset``, or None (no preset, or a method it lacks).
    ValueError names the valid presets."""
    if preset == NO_PRESET:
        return None
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESET_NAMES)}")
    return PRESETS[preset].get(method)


def apply_preset(data: dict[str, Any], default_method: str) -> dict[str, Any]:
    """Fill β, enn.zeta_decay and enn.rho of a raw config mapping from its preset where the
    mapping leaves them out. ``data`` is the YAML mapping with the flags already applied."""
    preset = data.get("preset", DEFAULT_PRESET)
    method = data.get("method", default_method)
    if not isinstance(preset, str) or not isinstance(method, str):
        return data  # validation reports the wrong type
    try:
        settings = preset_settings(preset, method)
    except ValueError:
        return data  # the field validator names it
    if settings is None:
        return data
    out = dict(data)
    enn = out.get("enn")
    if enn is not None and not isinstance(enn, dict):
        return out
    enn = dict(enn or {})
    if "beta" not in out:
        out["beta"] = settings.beta
    enn.setdefault("zeta_decay", settings.zeta_decay)
    enn.setdefault("rho", settings.rho)
    out["enn"] = enn
    return out
