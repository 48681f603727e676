"""Plugins end to end: a package built here, installed with pip into a folder the CLI is run
against, adds an acquisition method and a judge through the entry-point group
``activepref.plugins``; a run uses both; a second, broken plugin is reported by name and breaks
nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_PACKAGE = "ap-demo-plugin"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ap-demo-plugin"
version = "0.1.0"

[project.entry-points."activepref.plugins"]
demo = "ap_demo_plugin.register"
broken = "ap_demo_plugin.broken"

[tool.setuptools]
packages = ["ap_demo_plugin"]
"""

REGISTER = '''\
"""Registers one acquisition method, one judge and one engine, as a third-party package would."""
from pathlib import Path

import numpy as np

from activepref.acquisition import PairRule, Proposal, register
from activepref.acquisition.base import NO_CANDIDATE, annotate_pair
from activepref.engines import register_engine
from activepref.engines.local import LocalEngine
from activepref.judges import JudgeScore, register_judge


@register("first_two", "Demo plugin: the first two candidates of each prompt.", uses_reward_model=False)
def first_two(batch, rng):
    b, m = batch.mask.shape
    pair = np.full((b, 2), NO_CANDIDATE, dtype=np.int64)
    enough = batch.mask[:, :2].all(axis=1)
    pair[enough] = [0, 1]
    return Proposal(annotate_pair(pair, m), pair, PairRule.ORDER_BY_SCORE)


class LengthJudge:
    name = "length"
    batch_size = 16

    def score_batch(self, requests):
        return [JudgeScore(float(len(r.response.text))) for r in requests]


@register_judge("length", "Demo plugin: a longer response scores higher.", needs_model=False)
def make_length_judge(config, resources):
    return LengthJudge()


@register_engine("marking", "Demo plugin: the local engine, leaving a file behind when a run builds it.")
def make_marking_engine(config):
    Path(config.options["marker"]).write_text("built")
    return LocalEngine()
'''

BROKEN = 'raise ImportError("this plugin needs a library that is not installed")\n'


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the plugin (no index, no build isolation: offline) into its own folder."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "ap_demo_plugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "ap_demo_plugin" / "__init__.py").write_text("")
    (src / "ap_demo_plugin" / "register.py").write_text(REGISTER)
    (src / "ap_demo_plugin" / "broken.py").write_text(BROKEN)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True,
    )
    assert list(site.glob("ap_demo_plugin-*.dist-info/entry_points.txt"))
    return site


def cli(site: Path | None, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "activepref", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def test_plugins_lists_the_plugin_entries_with_their_package_and_the_broken_one(plugin_site: Path) -> None:
    proc = cli(plugin_site, "plugins", "--json")
    assert proc.returncode == 1, proc.stderr  # a plugin failed to load
    data = json.loads(proc.stdout)
    rows = {(r["kind"], r["name"]): r for r in data["registrations"]}
    assert rows[("method", "first_two")]["origin"] == PLUGIN_PACKAGE
    assert rows[("judge", "length")]["origin"] == PLUGIN_PACKAGE
    assert rows[("engine", "marking")]["origin"] == PLUGIN_PACKAGE and rows[("engine", "local")]["origin"] == "built-in"
    assert rows[("method", "dts")]["origin"] == "built-in" and rows[("backend", "openai")]["origin"] == "built-in"
    assert rows[("judge", "length")]["description"] == "Demo plugin: a longer response scores higher."
    assert data["failures"] == [{
        "plugin": "broken", "module": "ap_demo_plugin.broken", "package": PLUGIN_PACKAGE,
        "error": "ImportError: this plugin needs a library that is not installed",
    }]
    table = cli(plugin_site, "plugins")
    assert "first_two" in table.stdout and PLUGIN_PACKAGE in table.stdout
    assert "plugin failed to load: broken (ap_demo_plugin.broken, package ap-demo-plugin)" in " ".join(table.stderr.split())


def test_without_the_plugin_its_names_are_unknown(tmp_path: Path) -> None:
    proc = cli(None, "run", "--out", tmp_path / "r", "--method", "first_two")
    assert proc.returncode == 2
    assert "unknown method 'first_two'; choose one of: random," in " ".join(proc.stderr.split())


def test_a_run_uses_the_plugins_method_and_judge(plugin_site: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent("""\
        pool: builtin
        method: first_two
        batch_size: 8
        iterations: 2
        enn: {heads: 2, hidden: 8, steps: 2}
        judge: {kind: length}
        engine: {kind: marking, options: {marker: MARKER}}
    """).replace("MARKER", str(tmp_path / "engine-was-built")))
    run = cli(plugin_site, "run", "--out", tmp_path / "run", "-c", cfg)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "engine-was-built").read_text() == "built"  # the run built the plugin's engine
    out = tmp_path / "pairs.jsonl"
    exported = cli(plugin_site, "export", tmp_path / "run", "-o", out)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16  # 2 iterations x 8 prompts, one pair each
    for row in rows:
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        assert len(chosen) >= len(rejected)  # the plugin's judge decided every pair
    # An unknown name while a plugin is broken says which plugin failed.
    proc = cli(plugin_site, "run", "--out", tmp_path / "r2", "--method", "second_two")
    assert proc.returncode == 2
    assert "plugins that failed to load: broken from ap-demo-plugin: ImportError" in " ".join(proc.stderr.split())
