"""SIGKILL from outside at seeded random moments, resume each time, and the export must be
byte for byte the export of an uninterrupted run (issue 11).

The pools are sized so that a differently trained ensemble shows in the dataset: the
replay buffer outgrows the ENN's minibatch after two iterations (so the order of its rows
decides the minibatches), and training takes most of an iteration (so most kills land in
it). Each test prints its kill seed and where every kill landed; set
ACTIVEPREF_KILL_SEED to replay or vary a schedule.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from activepref.pools.sources import synthetic_pool, write_pool

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from kill_harness import (  # noqa: E402
    KillReport,
    assert_reveals_accounted_for,
    assert_same_final_model,
    cli,
    kill_and_restart,
    kill_seed,
    remove_tree,
    repeated_answers,
    retry_with_shorter_delays,
    run_position,
    seeded_delays,
    seeded_kills,
    status_invariants,
    timed,
)

ENN = "enn: {heads: 8, hidden: 32, steps: 300, lr: 0.003, batch_size: 32}\n"
KILLS = 6


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killpool")
    return write_pool(synthetic_pool(n_prompts=160, candidates=8, dim=16, seed=1), root / "pool.parquet")


def _audit_lines(audit: Path) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()] if audit.exists() else []


def _uninterrupted(config: Path, root: Path) -> tuple[bytes, float, float, dict]:
    """(export bytes, start-up seconds, work seconds, status) of an uninterrupted run."""
    out = root / "base"
    total = timed("run", "-c", config, "--out", out)
    startup = timed("resume", out)  # imports, opens the store, finds nothing to do
    cli("export", out, "--format", "jsonl", "-o", root / "base.jsonl")
    status = json.loads(cli("status", out, "--json").stdout)
    return (root / "base.jsonl").read_bytes(), startup, max(total - startup, 0.5), status


def _kill_resume_compare(
    config_text: str, root: Path, seed: int, *, share: float = 0.45, live: bool = False, audit: bool = True,
    killed_config: Callable[[str, Path], str] | None = None, after_base: Callable[[], None] | None = None,
    kills: int = KILLS, first_call_after: Callable[[float], float | None] | None = None, finish_timeout: float = 300,
    min_restarts: int = 2, first_call: Callable[[float], bool] | None = None,
) -> KillReport:
    """An uninterrupted run in root/base, then the same config killed KILLS times at seeded
    moments and resumed in root/killed; export, final ENN and status must match. The killed
    config is ``killed_config(text, root)`` (default: the text with a judge audit log, when
    ``audit``); ``after_base`` runs between the two. ``first_call_after(t)``: seconds from t to
    the server's first request since t (or None), to measure the start-up; with ``first_call(t)``
    (whether the server has had a request since t) most kills are timed from each life's first
    call (``seeded_kills``), the rest fall in start-up."""
    base_cfg = root / "base.yaml"
    base_cfg.write_text(config_text)
    base_started = time.monotonic()
    expected, startup, work, base_status = _uninterrupted(base_cfg, root)
    if first_call_after is not None:  # a live run loads its models before its first call: count that as start-up
        first = first_call_after(base_started)
        if first is not None and first > startup:
            work, startup = max(work - (first - startup), 0.5), first
    if after_base is not None:
        after_base()
    audit_log = root / "killed.audit"
    text = config_text if killed_config is None else killed_config(config_text, root)
    if audit:
        text = (text.replace("judge: {", f"judge: {{audit_log: '{audit_log}', ") if "judge: {" in text
                else text + f"judge: {{audit_log: '{audit_log}'}}\n")
    cfg = root / "killed.yaml"
    cfg.write_text(text)
    out = root / "killed"
    # On a loaded machine the uninterrupted run's duration can overstate the next run's; if the
    # run finished before its second kill, start again from nothing with the work part of the
    # delays halved (twice at most), as the bench kill test does.
    seen: list[dict] = []

    def position() -> str:
        where = run_position(out, live=live)
        if where not in ("no run yet", "creating"):  # status between kills: a possible state, nothing lost
            seen.append(status_invariants(out, seen[-1] if seen else None))
        return where

    def attempt(scale: float) -> KillReport:
        seen.clear()
        if first_call is None:
            delays: list = seeded_delays(seed, kills, startup, work * scale, share=share)
        else:
            delays = seeded_kills(seed, kills, startup, work * scale, share=share)
        return kill_and_restart(["run", "-c", cfg, "--out", out], ["resume", out], delays, position, seed, reset=remove_tree(out),
                                timeout=finish_timeout,
                                first_call=first_call)

    def reset() -> None:  # a new attempt starts from nothing: no run, no audit, no cached answers
        shutil.rmtree(out, ignore_errors=True)
        audit_log.unlink(missing_ok=True)
        for cached in root.glob("killed-cache.sqlite*"):  # a live run's own cache (see _live_run_under_kills)
            cached.unlink()

    report = retry_with_shorter_delays(attempt, min_restarts, reset)
    assert report.restarts >= min_restarts, f"the run finished after {report.restarts} kills ({report})"
    cli("export", out, "--format", "jsonl", "-o", root / "killed.jsonl")
    got = (root / "killed.jsonl").read_bytes()
    assert got == expected, f"resumed export differs from the uninterrupted run's ({report})"
    assert_same_final_model(out, root / "base")
    status = json.loads(cli("status", out, "--json").stdout)
    assert status["iterations_done"] == base_status["iterations_done"]
    assert status["annotations"] == base_status["annotations"]
    assert status["pairs"] == base_status["pairs"]
    if audit:
        lines = _audit_lines(audit_log)
        repeats = assert_reveals_accounted_for(lines, report.killed_pids)
        print(f"{repeats} reveal(s) repeated after a kill between reveal and commit")
        assert status["annotations"] == len({e["response_id"] for e in lines})
    return report


def test_random_kills_of_a_per_prompt_method_resume_byte_identical(pool: Path, tmp_path: Path) -> None:
    config = f"pool: {pool}\nmethod: drts\nbatch_size: 16\niterations: 8\nseed: 5\n{ENN}"
    _kill_resume_compare(config, tmp_path, kill_seed(11))


def test_random_kills_of_a_batch_design_resume_byte_identical(pool: Path, tmp_path: Path) -> None:
    config = f"pool: {pool}\nmethod: dopt\nbatch_size: 16\niterations: 8\nseed: 2\n{ENN}"
    _kill_resume_compare(config, tmp_path, kill_seed(12))


def test_random_kills_of_a_live_run_resume_byte_identical(tmp_path: Path) -> None:
    """A live run against the local OpenAI-compatible test server (generation, embedding and
    judge), SIGKILLed at LIVE_KILLS (20) seeded moments. Embedding on the server spares each
    life the ~4 s of loading a local embedding model (the slow variant loads MiniLM)."""
    # 10 iterations, more than twice what 20 kills got through (iterations 0-3 of seed 13): a
    # run that finished before its 20th kill is started again from nothing (the test took 389 s
    # instead of 218 s in a CI run where 8 iterations were not enough for lives that loaded MiniLM).
    _live_run_under_kills(tmp_path, LIVE_KILLS)


@pytest.mark.slow
def test_two_hundred_random_kills_of_a_live_run(tmp_path: Path) -> None:
    """The same with 200 kills (`-m slow`); its figures are in the README's Reliability section."""
    # Most lives are killed a little after their first call (so every one adds to the run) and
    # the run must outlast 200 of them. At a hundredth of the run's work per life (about 1 s
    # after the first call) a life got through 0.6-0.8 iterations on an idle machine; at the CI
    # variant's 0.3 s, 0.4. So a quarter of a hundredth, and 150 iterations.
    _live_run_under_kills(tmp_path, 200, iterations=150, share=0.5 / 200, local_embedder=True)


def _live_run_under_kills(tmp_path: Path, kills: int, iterations: int = 10, share: float | None = None,
                          local_embedder: bool = False) -> None:
    from servers.fake_openai import FakeOpenAIServer
    from test_live_server import GEN_MODELS, JUDGE_MODEL, LiveScript, write_prompts

    srv = FakeOpenAIServer(LiveScript()).start()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {i}: explain idea number {i} in two sentences." for i in range(8 * iterations)])
        models = "".join(
            f"    - {{name: {m}, backend: openai, base_url: '{srv.base_url}', model: {m}, max_concurrency: 8}}\n" for m in GEN_MODELS
        )
        config = (
            f"prompts: {prompts}\nmethod: drts\nbatch_size: 8\niterations: {iterations}\nseed: 4\n"
            f"generation:\n  samples_per_model: 2\n  max_tokens: 48\n  models:\n{models}"
            + ("embedding: {backend: sentence_transformers, model: builtin}\n" if local_embedder else
               f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, batch_size: 16}}\n")
            + f"judge: {{kind: likert, model: {{backend: openai, base_url: '{srv.base_url}', model: {JUDGE_MODEL}, max_concurrency: 16}}}}\n"
            + f"cache_path: '{tmp_path / 'cache.sqlite'}'\n"
            "enn: {heads: 8, hidden: 32, steps: 300, lr: 0.003, batch_size: 16}\n"
        )
        # The kill run gets its own request cache: a cache shared with the uninterrupted run
        # would answer every call and skip the server. Resumes are quicker than the first run
        # (generation answers come from the cache): shorter kills.
        base_requests: list[int] = []
        seed = kill_seed(13)
        print(f"kill seed {seed} (ACTIVEPREF_KILL_SEED replays it)")
        report = _kill_resume_compare(
            config, tmp_path, seed, share=share or min(0.25, 0.6 / kills), live=True, audit=False, kills=kills, finish_timeout=60.0 * iterations,
            min_restarts=kills,
            killed_config=lambda text, root: text.replace(str(tmp_path / "cache.sqlite"), str(root / "killed-cache.sqlite")),
            after_base=lambda: base_requests.append(len(srv.requests)),
            first_call_after=lambda t0: next((r.received_at - t0 for r in srv.requests if r.n >= 0 and r.received_at >= t0), None),
            first_call=lambda t0: any(r.n >= 0 and r.received_at >= t0 for r in reversed(srv.requests[-64:])),
        )
        # the last attempt's requests only (an earlier attempt that finished too soon was reset)
        killed = [r for r in srv.requests[base_requests[0]:] if (r.n >= 0 or r.path.startswith("/v1/embeddings"))
                  and r.received_at >= report.started_at - 0.5]
        repeats = repeated_answers(killed, report.killed_at)
        print(f"{report.restarts} kills survived ({report}); {len(killed)} requests, {repeats} answered request(s) (embeddings: per text) sent "
              f"again, each cut off in flight by a kill")
    finally:
        srv.stop()


LIVE_KILLS = 20


def _bench_args(pool: Path, out: Path, settings: Path) -> list[str | Path]:
    return ["bench", "--pool", pool, "--methods", "random,drts", "--seeds", "1", "--budget", "96", "--batch-size", "16",
            "--workers", "2", "-c", settings, "--out", out]


def test_random_kills_of_a_bench_rerun_to_the_same_results(pool: Path, tmp_path: Path) -> None:
    """`bench` killed (the whole process group, as Ctrl-C in a terminal does) at random
    moments and rerun each time gives the results.csv of an uninterrupted bench."""
    settings = tmp_path / "bench.yaml"
    settings.write_text(ENN + "eval_fraction: 0.2\n")
    base = tmp_path / "base"
    total = timed(*_bench_args(pool, base, settings))
    out = tmp_path / "killed"
    seed = kill_seed(14)
    args = _bench_args(pool, out, settings)
    # A rerun starts its workers and writes the report again, so its fixed cost is a large
    # share of this small bench: kill between a fifth and three quarters of the way through.
    position = lambda: ",".join(f"{d.name}={run_position(d)}" for d in sorted((out / "runs").glob("*"))) or "no run yet"  # noqa: E731
    # On a loaded machine the baseline's duration can overstate the next run's; if every delay
    # fell after the bench finished, start again with the delays halved (twice at most).
    report = retry_with_shorter_delays(
        lambda scale: kill_and_restart(args, args, seeded_delays(seed, 3, 0.2 * total * scale, total * scale, share=0.55), position, seed),
        1, lambda: shutil.rmtree(out))
    assert report.restarts >= 1
    assert (out / "results.csv").read_bytes() == (base / "results.csv").read_bytes()


def test_a_bench_whose_parent_alone_is_killed_leaves_no_worker_behind(pool: Path, tmp_path: Path) -> None:
    """SIGKILL to the bench process only (an OOM kill): its workers die with it, so the rerun
    is not refused by run directories still locked by orphans, and it completes the bench."""
    import signal
    import subprocess

    settings = tmp_path / "bench.yaml"
    settings.write_text(ENN + "eval_fraction: 0.2\n")
    out = tmp_path / "out"
    args = [str(a) for a in _bench_args(pool, out, settings)]
    proc = subprocess.Popen([sys.executable, "-m", "activepref", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list((out / "runs").glob("*/run.sqlite")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, "the bench finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("bench workers outlived their killed parent")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rerun = cli(*args, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "results.csv").exists()


def test_random_kills_of_export_never_leave_a_partial_dataset(pool: Path, tmp_path: Path) -> None:
    """`export` killed at random moments leaves either no dataset or the whole one (it writes a
    temporary file and renames it), and the next export writes the same bytes."""
    import signal
    import subprocess

    import numpy as np

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"pool: {pool}\nmethod: drts\nbatch_size: 16\niterations: 3\nseed: 5\nenn: {{heads: 4, hidden: 8, steps: 5}}\n")
    run_dir = tmp_path / "run"
    cli("run", "-c", cfg, "--out", run_dir)
    for fmt in ("jsonl", "parquet"):
        want = tmp_path / f"want.{fmt}"
        took = timed("export", run_dir, "--format", fmt, "-o", want)
        rng = np.random.default_rng(kill_seed(15))
        dest = tmp_path / f"killed.{fmt}"
        outcomes = []
        for delay in rng.uniform(0.3 * took, 1.1 * took, size=4):
            proc = subprocess.Popen([sys.executable, "-m", "activepref", "export", str(run_dir), "--format", fmt, "-o", str(dest)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=float(delay))
                outcomes.append("finished")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                outcomes.append("killed")
            if dest.exists():
                assert dest.read_bytes() == want.read_bytes(), f"a partial {fmt} dataset after {outcomes}"
        print(fmt, outcomes)
        cli("export", run_dir, "--format", fmt, "-o", dest)
        assert dest.read_bytes() == want.read_bytes()
