"""Concurrency (issue 18, part 5): `status` and `export` while a run writes read one
committed state each (every export is a prefix of the final one, every status a state the run
really passed through), two `resume`s at once leave exactly one working, and a live run and a
bench sharing one request cache both finish with the cache intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from activepref.core import runs
from activepref.core.export import export_run
from activepref.pools.sources import synthetic_pool, write_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_harness import status_invariants  # noqa: E402

CLI = [sys.executable, "-m", "activepref"]
SLOW_ENN = "enn: {heads: 8, hidden: 32, steps: 200, batch_size: 16}\n"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pool(synthetic_pool(n_prompts=120, candidates=6, dim=16, seed=7), tmp_path_factory.mktemp("pool") / "pool.parquet")


def start(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kw)


def test_status_and_export_while_a_run_writes_read_one_committed_state(pool, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"pool: {pool}\nmethod: dts\nbatch_size: 8\niterations: 10\nseed: 3\n{SLOW_ENN}", encoding="utf-8")
    run_dir = tmp_path / "run"
    proc = start("run", "-c", config, "--out", run_dir)
    exports: list[list[str]] = []
    statuses: list[dict] = []
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if not (run_dir / "run.sqlite").exists():
                time.sleep(0.05)
                continue
            try:
                statuses.append(status_invariants(run_dir, statuses[-1] if statuses else None))
            except Exception as exc:  # the store may still be being created
                if "being created" not in str(exc):
                    raise
                continue
            out = tmp_path / f"snap{len(exports)}.jsonl"
            export_run(run_dir, out, "jsonl")
            lines = out.read_text().splitlines()
            exports.append(lines)
            assert len(lines) == sum(1 for _ in lines)
            time.sleep(0.2)  # a few snapshots per iteration; reading back to back starved the run of CPU (100 s instead of 20)
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    export_run(run_dir, tmp_path / "final.jsonl", "jsonl")
    final = (tmp_path / "final.jsonl").read_text().splitlines()
    assert len(final) == runs.status(run_dir).pairs
    grew = [len(e) for e in exports]
    assert len(set(grew)) >= 3, f"too few distinct snapshots to show anything ({grew})"
    for lines in exports:
        assert lines == final[: len(lines)]  # a committed prefix: no row missing, changed or from a half-written step
    for st in statuses:
        assert st["pairs"] <= len(final)


def test_two_resumes_at_once_leave_exactly_one_working(pool, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"pool: {pool}\nmethod: dts\nbatch_size: 8\niterations: 6\nseed: 3\n{SLOW_ENN}", encoding="utf-8")
    run_dir = tmp_path / "run"
    crashed = subprocess.run([*CLI, "run", "-c", config, "--out", run_dir], env={**os.environ, "ACTIVEPREF_CRASH_AT": "select.after_commit@1"},
                             capture_output=True, text=True)
    assert crashed.returncode == -9
    first, second = start("resume", run_dir), start("resume", run_dir)
    codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    errors = [p.stderr.read().decode() for p in (first, second)]
    assert codes == [0, 2], (codes, errors)
    assert any("in use by another activepref process" in e for e in errors)
    assert not any("Traceback" in e for e in errors)
    assert runs.status(run_dir).iterations_done == 6


def test_a_live_run_and_a_bench_share_one_request_cache(pool, tmp_path):
    from servers.fake_openai import FakeOpenAIServer
    from test_live_server import LiveScript, write_prompts

    cache = tmp_path / "shared-cache.sqlite"
    with FakeOpenAIServer(LiveScript()) as srv:
        judge = (f"judge: {{kind: likert, model: {{backend: openai, base_url: '{srv.base_url}', model: judge-m, "
                 f"max_concurrency: 8}}}}\ncache_path: '{cache}'\n")
        prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {i}: say something about {i}." for i in range(24)])
        live = tmp_path / "live.yaml"
        live.write_text(
            f"prompts: {prompts}\nmethod: dts\nbatch_size: 6\niterations: 3\nseed: 2\n"
            "generation:\n  samples_per_model: 2\n  max_tokens: 32\n  models:\n"
            f"    - {{name: gen-a, backend: openai, base_url: '{srv.base_url}', model: gen-a, max_concurrency: 8}}\n"
            f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, batch_size: 8}}\n"  # vectors in the cache too
            + judge + "enn: {heads: 4, hidden: 16, steps: 50}\n", encoding="utf-8")
        bench = tmp_path / "bench.yaml"
        bench.write_text(judge + "enn: {heads: 4, hidden: 16, steps: 50}\n", encoding="utf-8")
        procs = [
            start("run", "-c", live, "--out", tmp_path / "run"),
            start("bench", "--pool", "builtin", "--methods", "random,dts", "--seeds", "1", "--budget", "24", "--batch-size", "8",
                  "--workers", "2", "-c", bench, "--out", tmp_path / "bench"),
        ]
        for p in procs:
            assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
        import csv

        with open(tmp_path / "bench" / "results.csv", encoding="utf-8") as fh:
            assert all(int(row["judge_calls"]) > 0 for row in csv.DictReader(fh))  # the bench's judge really used the server
        conn = sqlite3.connect(cache)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT COUNT(*) FROM embedding_cache").fetchone()[0] == 3 * 6 * 2  # every response's vector (3 iterations of 6 prompts, 2 samples)
        finally:
            conn.close()
        before = len(srv.requests)
        again = [start("run", "-c", live, "--out", tmp_path / "run2"),
                 start("bench", "--pool", "builtin", "--methods", "random,dts", "--seeds", "1", "--budget", "24", "--batch-size",
                       "8", "--workers", "2", "-c", bench, "--out", tmp_path / "bench2")]
        for p in again:
            assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
        assert len(srv.requests) == before  # every answer and vector of both came from the shared cache
    assert json.loads(subprocess.run([*CLI, "status", tmp_path / "run", "--json"], capture_output=True, text=True).stdout)["pairs"] > 0
