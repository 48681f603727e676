"""Which models a run's method can take candidates from, when it names a fixed few.

``delta_pair`` only ever pairs its ``strong`` model's answer over its ``weak`` one's (a method
declares this with ``generators=`` at registration): the other models need not generate, so a
live run does not ask them and no run's bill counts them, and a name the run lacks is refused
before anything is called. Kept free of torch: ``activepref check`` uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from activepref.acquisition import method_generators
from activepref.errors import ConfigError

if TYPE_CHECKING:
    from activepref.config import RunConfig


def fixed_generators(config: RunConfig) -> frozenset[str] | None:
    """The models whose candidates the run's method can ever pick, or None (any model)."""
    return method_generators(config.method, dict(config.method_options))


def check_generators_exist(config: RunConfig, names: list[str]) -> None:
    """ConfigError if the method names a model that is not among ``names`` (a live run's
    generation models, or the pool's): it would skip every prompt."""
    fixed = fixed_generators(config)
    missing = sorted(fixed - set(names)) if fixed is not None else []
    if missing:
        where = "generation.models" if config.live else "the pool"
        verb = "is not a model" if len(missing) == 1 else "are not models"
        raise ConfigError(f"method_options: {', '.join(map(repr, missing))} {verb} of {where} "
                          f"(models: {', '.join(names)}); {config.method} would skip every prompt")
