"""`activepref apl` end to end: a tiny random policy trained with TRL's DPOTrainer, a pairwise
judge served over HTTP by the fake OpenAI-compatible server, the run store, crash + resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from apl_helpers import PairwiseScript, apl_config, save_tiny_policy, write_prompt_file
from cli_fixtures import one_torch_thread, wide_consoles  # noqa: F401 - autouse fixtures
from servers.fake_openai import FakeOpenAIServer
from typer.testing import CliRunner

from activepref.apl.report import COLUMNS
from activepref.apl.scores import certainty, completion_ids, implicit_rewards, predictive_entropy, sequence_logprobs
from activepref.cli import app

pytest.importorskip("trl")
runner = CliRunner()
CLI = [sys.executable, "-m", "activepref"]
ACQS = ["random", "entropy", "certainty", "hybrid"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def bodies(srv: FakeOpenAIServer, since: int = 0) -> list[str]:
    return [json.dumps(r.body, sort_keys=True) for r in srv.chat_requests[since:] if isinstance(r.body, dict)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("apl")
    os.environ["APL_TEST_KEY"] = "sk-apl-secret-123"
    policy = save_tiny_policy(root)
    prompts = write_prompt_file(root / "prompts.jsonl")
    script = PairwiseScript()
    srv = FakeOpenAIServer(script).start()
    cfg = write_yaml(root / "apl.yaml", apl_config(root, policy, prompts, srv.base_url, acquisitions=ACQS, threads=1))
    out = root / "out"
    result = invoke("apl", "--config", cfg, "--out", out)
    assert result.exit_code == 0, result.output
    yield {"root": root, "srv": srv, "script": script, "cfg": cfg, "out": out, "policy": policy, "prompts": prompts,
           "output": result.output, "requests": bodies(srv)}
    srv.stop()


def test_every_acquisition_runs_and_the_report_is_written(env) -> None:
    out = env["out"]
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["acquisition"], r["round"]) for r in rows] == [(a, str(t)) for a in ACQS for t in (1, 2)]
    for r in rows:
        t = int(r["round"])
        assert int(r["labels"]) + int(r["label_ties"]) + int(r["label_failures"]) == 2 * t  # M = 2 per round
        assert int(r["n_eval"]) == 4 and int(r["failures"]) == 0
        assert 0.0 <= float(r["win_rate"]) <= 1.0
        assert float(r["win_rate"]) == pytest.approx((int(r["wins"]) + 0.5 * int(r["ties"])) / 4)
    summary = (out / "summary.md").read_text()
    assert "| acquisition | round 1 | round 2 |" in summary and "| hybrid |" in summary
    assert (out / "winrate.png").stat().st_size > 5000
    assert "win rate" in env["output"].lower()
    for acq in ACQS:  # only the last round's policy is kept
        assert [p.name for p in (out / "runs" / f"{acq}-seed0" / "policy").iterdir()] == ["round-2.safetensors"]


def test_no_request_is_sent_twice_and_the_key_stays_secret(env) -> None:
    reqs = env["requests"]
    assert len(reqs) == len(set(reqs))  # every paid call once (the cache answers repeats)
    judged = env["script"].judged
    assert judged and len(judged) == len(reqs)  # the policy is local: every HTTP call is a judge call
    for path in [*env["out"].rglob("*"), *env["root"].rglob("*cache*")]:  # every file: reports, stores, plots, weights
        if path.is_file():
            assert b"sk-apl-secret-123" not in path.read_bytes(), path
    assert "sk-apl-secret-123" not in env["output"]


def test_rerunning_the_command_resumes_with_no_call_and_the_same_results(env) -> None:
    before = len(env["srv"].chat_requests)
    first = (env["out"] / "results.csv").read_text()
    result = invoke("apl", "--config", env["cfg"], "--out", env["out"])
    assert result.exit_code == 0, result.output
    assert len(env["srv"].chat_requests) == before
    assert (env["out"] / "results.csv").read_text() == first


def json_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def _run_db(out: Path, acq: str) -> sqlite3.Connection:
    return sqlite3.connect(out / "runs" / f"{acq}-seed0" / "apl.sqlite")


def _round_scores(db: sqlite3.Connection, t: int, beta: float = 0.1):
    rows = db.execute("SELECT prompt_id, sample, logp, gen_logp, ref_logp FROM samples WHERE round = ? ORDER BY rowid", (t,)).fetchall()
    pids = list(dict.fromkeys(r[0] for r in rows))
    logp = np.array([[r[2] for r in rows if r[0] == p][:2] for p in pids])
    gen = np.array([[r[3] for r in rows if r[0] == p] for p in pids])
    ref = np.array([[r[4] for r in rows if r[0] == p][:2] for p in pids])
    return pids, predictive_entropy(gen), certainty(implicit_rewards(logp, ref, beta))


@pytest.mark.parametrize("acq", ["entropy", "certainty", "hybrid"])
def test_the_picks_are_the_top_m_of_the_stored_scores(env, acq) -> None:
    db = _run_db(env["out"], acq)
    for t in (1, 2):
        pids, ent, cert = _round_scores(db, t)
        picked = [r[0] for r in db.execute("SELECT prompt_id FROM picks WHERE round = ? ORDER BY rank", (t,))]
        assert len(picked) == 2
        if acq == "entropy":
            assert len(pids) == 4 and min(ent[pids.index(p)] for p in picked) >= max(
                ent[i] for i, p in enumerate(pids) if p not in picked)
        elif acq == "certainty":
            assert len(pids) == 4
            if t == 2:  # at theta0 every certainty is 0 (round 1 is a random draw)
                assert min(cert[pids.index(p)] for p in picked) >= max(cert[i] for i, p in enumerate(pids) if p not in picked)
            else:
                assert np.all(cert == 0)
        else:  # hybrid: J*S = 8 prompts sampled, the top S = 4 by entropy, then the top M = 2 by certainty
            assert len(pids) == 8
            top_s = set(np.argsort(-ent, kind="stable")[:4].tolist())
            assert all(pids.index(p) in top_s for p in picked)
            if t == 2:
                rest = [cert[i] for i in top_s if pids[i] not in picked]
                assert min(cert[pids.index(p)] for p in picked) >= max(rest)
    # earlier rounds' picks are never sampled again
    r1 = {r[0] for r in db.execute("SELECT prompt_id FROM picks WHERE round = 1")}
    r2 = {r[0] for r in db.execute("SELECT prompt_id FROM samples WHERE round = 2")}
    assert not r1 & r2


def test_stored_logprobs_are_the_policy_log_probabilities(env) -> None:
    """Round 1 samples come from theta0: their stored log-probs equal a fresh computation with
    the saved model; round 2's ref_logp are theta0's, logp the trained policy's (different)."""
    from activepref.backends.transformers_local import load_model

    entry = load_model(str(env["policy"]))
    db = _run_db(env["out"], "entropy")
    prompts = {json.loads(line)["prompt_id"]: json.loads(line)["prompt"] for line in env["prompts"].read_text().splitlines()}
    for t in (1, 2):
        rows = db.execute("SELECT prompt_id, text, logp, ref_logp FROM samples WHERE round = ? AND sample < 2", (t,)).fetchall()
        seqs = [completion_ids(entry.tokenizer, [{"role": "user", "content": prompts[p]}], text) for p, text, _, _ in rows]
        fresh = sequence_logprobs(entry.model, seqs, pad_id=entry.tokenizer.pad_token_id)
        np.testing.assert_allclose([r[3] for r in rows], fresh, rtol=1e-5, atol=1e-4)
        if t == 1:
            np.testing.assert_allclose([r[2] for r in rows], fresh, rtol=1e-5, atol=1e-4)
        else:
            assert not np.allclose([r[2] for r in rows], fresh, atol=1e-3)


@pytest.mark.parametrize(
    ("acq", "point"),
    [("certainty", "apl-sampled@2"), ("certainty", "apl-judged@1"), ("certainty", "apl-checkpoint-written@1"),
     ("certainty", "apl-labelled@2"), ("certainty", "apl-eval-judged@2"), ("certainty", "apl-evaluated@1"),
     ("hybrid", "apl-selected@2"), ("entropy", "apl-trained@1"), ("certainty", "apl-train.mid@1"),
     ("entropy", "apl-train.mid@2")],
)
def test_sigkill_then_rerun_gives_the_uninterrupted_results_without_repeated_calls(env, acq, point, tmp_path) -> None:
    cfg = yaml.safe_load(env["cfg"].read_text())
    cfg.update(acquisitions=[acq], cache_path=str(tmp_path / "cache.sqlite"))  # a fresh cache: every call is paid
    _kill_at_then_rerun(env, cfg, acq, point, tmp_path, want=[r for r in read_csv(env["out"] / "results.csv") if r["acquisition"] == acq])


def test_sigkill_during_continued_training_then_rerun_matches_uninterrupted(env, tmp_path) -> None:
    """dpo.reinit: false -- round 2 trains from theta1, which an uninterrupted run keeps in
    memory and a resumed one reads back from round 1's checkpoint."""
    cfg = yaml.safe_load(env["cfg"].read_text())
    cfg.update(acquisitions=["certainty"], cache_path=str(tmp_path / "base-cache.sqlite"))
    cfg["dpo"] = {**cfg["dpo"], "reinit": False}
    base = tmp_path / "base"
    result = invoke("apl", "--config", write_yaml(tmp_path / "base.yaml", cfg), "--out", base)
    assert result.exit_code == 0, result.output
    cfg["cache_path"] = str(tmp_path / "cache.sqlite")
    _kill_at_then_rerun(env, cfg, "certainty", "apl-train.mid@2", tmp_path, want=read_csv(base / "results.csv"))


def _kill_at_then_rerun(env, cfg: dict, acq: str, point: str, tmp_path: Path, want: list[dict]) -> None:
    path = write_yaml(tmp_path / "apl.yaml", cfg)
    out = tmp_path / "out"
    start = len(env["srv"].chat_requests)
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.run([*CLI, "apl", "--config", str(path), "--out", str(out)], env={**os.environ, "ACTIVEPREF_CRASH_AT": point},
                              stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    assert not (out / "results.csv").exists()
    result = invoke("apl", "--config", path, "--out", out)
    assert result.exit_code == 0, result.output
    reqs = bodies(env["srv"], start)
    assert len(reqs) == len(set(reqs))  # nothing the killed process was answered is asked again
    assert read_csv(out / "results.csv") == want


def test_a_judge_that_answers_garbage_is_retried_then_recorded_as_failure(env, tmp_path) -> None:
    script = PairwiseScript(garbage=True)
    with FakeOpenAIServer(script) as srv:
        cfg = apl_config(tmp_path, env["policy"], env["prompts"], srv.base_url, acquisitions=["random"], rounds=1, threads=1)
        result = invoke("apl", "--config", write_yaml(tmp_path / "apl.yaml", cfg), "--out", tmp_path / "out")
        assert result.exit_code == 0, result.output
        n_judge = len(srv.chat_requests)
    db = _run_db(tmp_path / "out", "random")
    labels = db.execute("SELECT outcome, chosen, detail FROM labels").fetchall()
    assert [lab[0] for lab in labels] == ["failure", "failure"] and all(lab[1] is None for lab in labels)
    assert "2 attempts" in labels[0][2]
    training = json.loads(db.execute("SELECT metrics FROM training WHERE round = 1").fetchone()[0])
    assert training["steps"] == 0  # nothing was trained on a failed label
    row = read_csv(tmp_path / "out" / "results.csv")[0]
    # the policy is still theta0, so its held-out answers equal theta0's: ties, with no judge call
    assert row["labels"] == "0" and row["label_failures"] == "2"
    assert row["ties"] == "4" and row["win_rate"] == "0.500000"
    assert n_judge == 2 * 2  # each of the two pairs asked twice (max_retries 1), then given up


@pytest.mark.parametrize("dpo", [{"reinit": False}, {"lora": {"r": 4, "alpha": 8}}], ids=["continued", "lora"])
def test_continued_training_and_lora_options_train_the_policy(env, tmp_path, dpo) -> None:
    cfg = yaml.safe_load(env["cfg"].read_text())
    cfg.update(acquisitions=["certainty"], rounds=2, cache_path=str(tmp_path / "cache.sqlite"))
    cfg["dpo"] = {**cfg["dpo"], **dpo}
    result = invoke("apl", "--config", write_yaml(tmp_path / "apl.yaml", cfg), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    db = _run_db(tmp_path / "out", "certainty")
    metrics = [json.loads(m) for (m,) in db.execute("SELECT metrics FROM training ORDER BY round")]
    labels = [n for (n,) in db.execute("SELECT COUNT(*) FROM labels WHERE outcome = 'ok' GROUP BY round ORDER BY round")]
    if dpo.get("reinit") is False:  # round 2 trains on its own labels only, from theta1
        assert [m["pairs"] for m in metrics] == labels
        # the reference stays theta0: round 2 starts from theta1 != theta0, so its first DPO loss is not log 2
        assert metrics[0]["first_loss"] == pytest.approx(np.log(2), abs=1e-5)
        assert abs(metrics[1]["first_loss"] - np.log(2)) > 1e-4
    else:
        assert [m["pairs"] for m in metrics] == list(np.cumsum(labels))
    assert all(m["steps"] >= 1 for m in metrics)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels_per_round": 9}, "labels_per_round (M=9) must not exceed prompts_per_round"),
        ({"acquisitions": ["random", "magic"]}, "acquisitions.1"),
        ({"policy": {"backend": "openai", "model": "x"}}, "policy.backend must be 'transformers'"),
        ({"dpo": {"reinit": False, "lora": {"r": 2}}}, "dpo.lora needs dpo.reinit"),
        ({"policy": {"backend": "transformers", "model": "x", "dtype": "bfloat16"}}, "policy.dtype must be float32"),
        ({"rounds": 6}, "need at least 18 ((rounds-1)*M + S*J)"),
        ({"dpo": {"extra": {"lerning_rate": 1}}}, "dpo.extra.lerning_rate: not an argument of trl.DPOConfig"),
        ({"dpo": {"extra": {"seed": 3}}}, "dpo.extra.seed: set by activepref"),
    ],
)
def test_config_errors_name_the_file_and_the_field(env, tmp_path, change, message) -> None:
    cfg = yaml.safe_load(env["cfg"].read_text())
    cfg.update(change)
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    before = len(env["srv"].chat_requests)
    result = invoke("apl", "--config", path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.output
    assert str(path) in result.output or str(env["prompts"]) in result.output or "dpo.extra" in message
    assert len(env["srv"].chat_requests) == before  # refused before any paid call


def test_apl_needs_exactly_one_of_config_or_quickstart(tmp_path) -> None:
    result = invoke("apl", "--out", tmp_path)
    assert result.exit_code == 2 and "exactly one of --config FILE or --quickstart" in result.output


def test_more_rounds_or_seeds_extend_the_runs_already_done(env, tmp_path) -> None:
    """`rounds`, `seeds` and `acquisitions` are not part of a run's identity: raising the round
    count continues the finished runs, and only the new rounds cost calls."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(env["out"], out)
    before = len(env["srv"].chat_requests)
    result = invoke("apl", "--config", env["cfg"], "--out", out, "--acquisitions", "certainty", "--rounds", "3")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "results.csv")
    assert [(r["acquisition"], r["round"]) for r in rows] == [("certainty", "1"), ("certainty", "2"), ("certainty", "3")]
    old = [r for r in read_csv(env["out"] / "results.csv") if r["acquisition"] == "certainty"]
    assert rows[:2] == old
    new = env["srv"].chat_requests[before:]
    assert 0 < len(new) <= 2 + 4  # round 3 only: M = 2 labels and at most 4 held-out comparisons
    edited = write_prompt_file(tmp_path / "more.jsonl", [*json_prompts(env["prompts"]), "write a poem about the tree"])
    grown = apl_config(env["root"], env["policy"], edited, env["srv"].base_url)
    result = invoke("apl", "--config", write_yaml(tmp_path / "grown.yaml", grown), "--out", out, "--acquisitions", "certainty")
    assert result.exit_code == 2 and "different config" in result.output  # an edited prompt file moves the split
    changed = apl_config(env["root"], env["policy"], env["prompts"], env["srv"].base_url, max_tokens=9)
    result = invoke("apl", "--config", write_yaml(tmp_path / "changed.yaml", changed), "--out", out, "--acquisitions", "certainty")
    assert result.exit_code == 2 and "different config" in result.output


APL_KILLS = 6


def test_random_kills_then_reruns_give_the_uninterrupted_results(env, tmp_path) -> None:
    """`apl` SIGKILLed (with its process group) at seeded random moments and rerun after each:
    the same results.csv as an uninterrupted run, and an answered judge call reaches the server
    again only if a kill cut it off in flight."""
    import time

    from kill_harness import kill_and_restart, kill_seed, repeated_answers, retry_with_shorter_delays, seeded_delays

    acq = "hybrid"
    cfg = yaml.safe_load(env["cfg"].read_text())
    cfg.update(acquisitions=[acq], cache_path=str(tmp_path / "base-cache.sqlite"))
    base = tmp_path / "base"
    started = time.monotonic()
    proc = subprocess.run([*CLI, "apl", "--config", str(write_yaml(tmp_path / "base.yaml", cfg)), "--out", str(base)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = time.monotonic() - started
    print(f"apl: {total:.1f} s uninterrupted")
    want = read_csv(base / "results.csv")

    cfg["cache_path"] = str(tmp_path / "cache.sqlite")  # a fresh cache: every call is paid
    path = write_yaml(tmp_path / "killed.yaml", cfg)
    out = tmp_path / "out"
    command = ["apl", "--config", path, "--out", out]
    seed = kill_seed(21)
    first_request = [len(env["srv"].chat_requests)]  # where the last attempt's requests begin

    def attempt(scale: float):
        # apl's start-up (imports, the policy, the reference model) is most of a small run:
        # kills between a fifth and four fifths of the uninterrupted time
        delays = seeded_delays(seed, APL_KILLS, 0.2 * total * scale, total * scale, share=0.6)
        return kill_and_restart(command, command, delays, lambda: "running" if out.exists() else "no run yet", seed)

    def reset() -> None:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        for leftover in tmp_path.glob("cache.sqlite*"):  # the database and its WAL files
            leftover.unlink()
        first_request[0] = len(env["srv"].chat_requests)  # a new attempt from nothing pays every call again

    report = retry_with_shorter_delays(attempt, 2, reset)
    print(report)
    assert report.restarts >= 2, f"apl finished before it could be killed twice ({report})"
    assert read_csv(out / "results.csv") == want
    killed = [r for r in env["srv"].chat_requests[first_request[0]:] if r.n >= 0]
    repeats = repeated_answers(killed, report.killed_at, in_flight=16)
    print(f"{report.restarts} kills, {len(killed)} judge requests, {repeats} answered request(s) sent again (in flight at a kill)")
