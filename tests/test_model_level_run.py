"""Model-level acquisition in runs: on a pool of seed 001's regime (prompt features, token
counts) only the chosen models' candidates are seen, judged and billed, a SIGKILL at any
step resumes to the same dataset, and a live run asks only the chosen models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from kill_harness import assert_same_final_model  # noqa: E402

from activepref.core.store import RunStore  # noqa: E402
from activepref.pools.auf import AUFRegime, write_auf_pool  # noqa: E402

CLI = [sys.executable, "-m", "activepref"]
K, B, ITERS = 3, 16, 3


def _cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-level")
    pool = root / "auf.parquet"
    write_auf_pool(AUFRegime(n_prompts=96, dim=16, seed=4), pool, prompt_features=True)
    cfg = root / "cfg.yaml"
    cfg.write_text(
        f"pool: {pool}\nmethod: model_dts\nmethod_options: {{k: {K}, epsilon: 0.2, response_method: drts}}\n"
        f"batch_size: {B}\niterations: {ITERS}\nseed: 5\neval_fraction: 0.25\n"
        "enn: {heads: 4, hidden: 16, steps: 20, lr: 0.003, batch_size: 8}\n"
    )
    base = root / "base"
    _cli("run", "-c", str(cfg), "--out", str(base))
    export = root / "base.jsonl"
    _cli("export", str(base), "--format", "jsonl", "-o", str(export))
    return {"root": root, "pool": pool, "cfg": cfg, "base": base, "export": export}


def test_only_chosen_models_are_seen_judged_and_billed(setup) -> None:
    table = pq.read_table(setup["pool"], columns=["response_id", "prompt_id", "model", "completion_tokens"]).to_pylist()
    tokens = {(r["prompt_id"], r["model"]): r["completion_tokens"] for r in table}
    with RunStore.open_readonly(setup["base"]) as store:
        choices = store.model_choices()
        prompts = {i: p.id for i, (p, _, _) in enumerate(store.prompts())}
        responses, response_prompt = store.responses()
        assert len(choices) == B * ITERS and all(len(m) == K for m in choices.values())
        judged = set(store.scores("replay"))
        for r in judged:  # the judge saw only candidates of chosen models
            assert responses[r].model in choices[int(response_prompt[r])]
        for pref in store.preference_rows():
            for r in (pref.chosen_idx, pref.rejected_idx):
                assert responses[r].model in choices[pref.prompt_idx]
        assert len(store.preference_rows()) > 0
    status = json.loads(_cli("status", str(setup["base"]), "--json").stdout)
    cost = status["cost"]
    assert cost["generation_calls"] == K * B * ITERS
    assert cost["generated_tokens"] == sum(tokens[(prompts[p], m)] for p, ms in choices.items() for m in ms)
    # the same response-level method on all 30 models generates 10x as much
    full = setup["root"] / "full.yaml"
    full.write_text(setup["cfg"].read_text().replace("method: model_dts", "method: drts").replace(
        f"method_options: {{k: {K}, epsilon: 0.2, response_method: drts}}\n", ""))
    _cli("run", "-c", str(full), "--out", str(setup["root"] / "full"))
    full_cost = json.loads(_cli("status", str(setup["root"] / "full"), "--json").stdout)["cost"]
    assert full_cost["generation_calls"] == 30 * B * ITERS
    est = json.loads(_cli("estimate", "-c", str(setup["cfg"])).stdout.strip().splitlines()[-1])
    assert est["generation_calls"] == K * B * ITERS


@pytest.mark.parametrize("point", ["model_select.before_commit@1", "model_select.after_commit@2", "select.before_commit@1", "train.mid@2"])
def test_sigkill_anywhere_then_resume_gives_the_same_choices_and_dataset(setup, point) -> None:
    out = setup["root"] / point.replace("@", "-").replace(".", "-")
    killed = _cli("run", "-c", str(setup["cfg"]), "--out", str(out), env={"ACTIVEPREF_CRASH_AT": point}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1000:]
    _cli("resume", str(out))
    export = out.with_suffix(".jsonl")
    _cli("export", str(out), "--format", "jsonl", "-o", str(export))
    assert _rows(export) == _rows(setup["export"])
    with RunStore.open_readonly(out) as a, RunStore.open_readonly(setup["base"]) as b:
        assert a.model_choices() == b.model_choices()
    assert_same_final_model(out, setup["base"])


def test_a_pool_without_prompt_features_is_refused_with_a_clear_error(setup, tmp_path) -> None:
    pool = tmp_path / "bare.parquet"
    write_auf_pool(AUFRegime(n_prompts=40, dim=8, seed=1), pool)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pool: {pool}\nmethod: model_ucb\nbatch_size: 8\niterations: 1\n")
    proc = _cli("run", "-c", str(cfg), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "prompt_features" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"pool: {pool}\nmethod: model_ucb\nmethod_options: {{response_method: dpp_batch}}\n")
    proc = _cli("run", "-c", str(bad), "--out", str(tmp_path / "r2"), check=False)
    assert proc.returncode == 2 and "response_method" in proc.stderr and "dpp_batch" in proc.stderr
    design = tmp_path / "design.yaml"
    design.write_text(f"pool: {pool}\nmethod: model_ucb\nmethod_options: {{response_method: dopt}}\n")
    proc = _cli("run", "-c", str(design), "--out", str(tmp_path / "r3"), check=False)
    assert proc.returncode == 2 and "per-prompt" in proc.stderr


def test_a_live_run_asks_only_the_chosen_models(tmp_path) -> None:
    from servers.fake_openai import FakeOpenAIServer
    from test_live_server import PLAIN_PROMPTS, SAMPLES, LiveScript, chat, write_config, write_prompts

    with FakeOpenAIServer(LiveScript()) as srv:
        prompts = write_prompts(tmp_path / "p.jsonl", PLAIN_PROMPTS)
        cfg = write_config(tmp_path, "live", srv, prompts, tmp_path / "cache.sqlite")
        cfg.write_text(cfg.read_text().replace("method: dts", "method: model_ucb\nmethod_options: {k: 1, response_method: dts}"))
        _cli("run", "-c", str(cfg), "--out", str(tmp_path / "run"))
        gen, judge = chat(srv)
        assert len(gen) == len(PLAIN_PROMPTS) * SAMPLES * 1  # one model of two per prompt
        with RunStore.open_readonly(tmp_path / "run") as store:
            choices = store.model_choices()
            assert len(choices) == len(PLAIN_PROMPTS) and all(len(v) == 1 for v in choices.values())
            assert sorted(store.prompt_vectors()) == sorted(choices)
            responses, response_prompt = store.responses()
            assert all(r.model in choices[int(p)] for r, p in zip(responses, response_prompt))
            asked = {(r.body["model"], next(m["content"] for m in r.body["messages"] if m["role"] == "user")) for r in gen}
            texts = {i: p.text for i, (p, _, _) in enumerate(store.prompts())}
            assert asked == {(m, texts[p]) for p, ms in choices.items() for m in ms}
        assert judge
