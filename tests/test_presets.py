"""Per-method presets from 001 Table 16 (paper-dpo, paper-rm): filled in where unset, never over a user's value."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from activepref.cli import app
from activepref.config import load_config
from activepref.errors import ConfigError
from activepref.presets import PRESETS

# 001 Table 16, typed in again by hand: method -> (beta, zeta decay, rho) for DPO and for RM.
TABLE_16 = {
    "paper-dpo": {"infomax": (2, 0.99, 1000), "dts": (1, 0.99, 1000), "maxminlcb": (1, 0.99, 1000), "drts": (1, 0.999, 1000), "deltaucb": (2, 0.999, 1000)},
    "paper-rm": {"infomax": (2, 0.99, 1000), "dts": (1, 0.999, 1000), "maxminlcb": (2, 0.9, 1000), "drts": (1, 0.9, 1000), "deltaucb": (1, 0.99, 100)},
}


def settings(config) -> tuple[float, float, int]:
    return (config.beta, config.enn.zeta_decay, config.enn.rho)


@pytest.mark.parametrize("preset", ["paper-dpo", "paper-rm"])
def test_every_table_16_row(preset):
    assert set(PRESETS[preset]) == set(TABLE_16[preset])
    for method, expected in TABLE_16[preset].items():
        assert settings(load_config(None, {"method": method, "preset": preset})) == expected, method


def test_default_preset_is_paper_dpo_and_none_keeps_the_plain_defaults():
    assert load_config(None, {"method": "deltaucb"}).preset == "paper-dpo"
    assert settings(load_config(None, {"method": "deltaucb"})) == (2, 0.999, 1000)
    assert settings(load_config(None, {"method": "deltaucb", "preset": "none"})) == (1.0, 0.99, 1000)
    # a method the table lacks gets the plain defaults under every preset
    for preset in ("paper-dpo", "paper-rm", "none"):
        assert settings(load_config(None, {"method": "bald", "preset": preset})) == (1.0, 0.99, 1000)


def test_a_users_value_always_wins(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: deltaucb\npreset: paper-rm\nenn: {zeta_decay: 0.5}\n")
    config = load_config(cfg)
    assert settings(config) == (1, 0.5, 100)  # zeta_decay from the file, the rest from the preset
    flagged = load_config(cfg, {"beta": 3.0, "enn.rho": 7})
    assert settings(flagged) == (3.0, 0.5, 7)
    # an explicit value equal to the plain default is still the user's
    assert load_config(None, {"method": "deltaucb", "beta": 1.0}).beta == 1.0


def test_unknown_preset_is_named(tmp_path):
    with pytest.raises(ConfigError, match="preset: unknown preset 'paper'; choose one of: paper-dpo, paper-rm, none"):
        load_config(None, {"preset": "paper"})


def test_methods_command_shows_the_presets(monkeypatch):
    from activepref import cli

    monkeypatch.setattr(cli.console, "width", 250)  # one table row per line
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ deltaucb"))
    assert "2 / 0.999 / 1000" in row and "1 / 0.99 / 100" in row
    assert "paper-dpo" in result.output and "paper-rm" in result.output


def test_a_run_stores_the_resolved_values(tmp_path):
    from activepref.config import config_from_json
    from activepref.core.runs import run
    from activepref.core.store import RunStore

    config = load_config(None, {"method": "drts", "preset": "paper-rm", "iterations": 1, "batch_size": 8, "enn.steps": 2})
    run(config, tmp_path / "r")
    with RunStore.open_readonly(tmp_path / "r") as store:
        stored = config_from_json(store.meta("config"))
    assert settings(stored) == (1, 0.9, 1000) and stored.preset == "paper-rm"
