"""The one Registry type behind methods, judges, backends and embedders."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from activepref.errors import ConfigError
from activepref.registry import BUILTIN, Registry, registering_as


@dataclass(frozen=True)
class Thing:
    name: str
    description: str


def test_add_get_and_the_mapping_view() -> None:
    reg: Registry[Thing] = Registry("thing")
    a = reg.add(Thing("a", "the first"))
    reg.add(Thing("b", "the second"))
    assert reg.get("a") is a and reg["b"].description == "the second"
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "a" in reg and "z" not in reg
    assert dict(reg.items()) == {"a": a, "b": Thing("b", "the second")}
    assert reg.available() == [a, Thing("b", "the second")]
    assert reg.origin("a") == BUILTIN


def test_unknown_names_list_the_known_ones() -> None:
    reg: Registry[Thing] = Registry("thing")
    reg.add(Thing("a", "x"))
    with pytest.raises(ConfigError, match=r"^unknown thing 'c'; choose one of: a$"):
        reg.get("c")
    with pytest.raises(KeyError):
        reg["c"]
    with pytest.raises(ValueError, match="unknown thing 'c'"):
        reg.check_name("c")
    assert reg.check_name("a") == "a"


def test_a_name_registered_twice_is_refused_naming_both_origins() -> None:
    reg: Registry[Thing] = Registry("thing")
    reg.add(Thing("a", "x"))
    with registering_as("some-plugin"), pytest.raises(ValueError, match=r"'a' registered twice \(first by built-in, again by some-plugin\)"):
        reg.add(Thing("a", "y"))
    assert reg.get("a").description == "x"


@pytest.mark.parametrize("bad", [Thing("", "x"), Thing("a", " ")])
def test_an_entry_needs_a_name_and_a_description(bad: Thing) -> None:
    with pytest.raises(ValueError):
        Registry("thing").add(bad)


def test_origin_follows_the_registering_block() -> None:
    reg: Registry[Thing] = Registry("thing")
    with registering_as("pkg-one"):
        reg.add(Thing("p", "from a plugin"))
    reg.add(Thing("q", "built in"))
    assert reg.origin("p") == "pkg-one" and reg.origin("q") == BUILTIN


def test_lazy_names_are_known_before_their_module_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry[Thing] = Registry("thing", lazy={"heavy": "ap_lazy_probe"})
    (tmp_path / "ap_lazy_probe.py").write_text(
        "from tests_registry_target import REG\n"
        "from test_registry import Thing\n"
        "REG.add(Thing('heavy', 'imported on first use'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    target = type(sys)("tests_registry_target")
    target.REG = reg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_registry_target", target)
    assert "heavy" in reg and reg.names() == ["heavy"]
    assert "ap_lazy_probe" not in sys.modules  # knowing the name imported nothing
    assert reg.get("heavy").description == "imported on first use"
    assert "ap_lazy_probe" in sys.modules
    monkeypatch.delitem(sys.modules, "ap_lazy_probe")
    reg.add(Thing("light", "registered eagerly"))
    assert reg.names() == ["heavy", "light"]  # lazy names keep their place once imported


def test_the_four_extension_points_share_the_type() -> None:
    from activepref.acquisition import REGISTRY
    from activepref.backends import BACKENDS
    from activepref.judges import JUDGES
    from activepref.live.embedders import EMBEDDERS

    for reg in (REGISTRY, BACKENDS, EMBEDDERS, JUDGES):
        assert isinstance(reg, Registry)
    assert {"random", "dts", "dopt", "coreset"} <= set(REGISTRY)
    assert set(JUDGES) >= {"replay", "likert", "reward_model"}
    assert set(BACKENDS) >= {"openai", "transformers", "vllm"}
    assert set(EMBEDDERS) >= {"transformers", "sentence_transformers"}
