"""Kill a command from outside at seeded random moments, restart it each time, finish it.

Used by the kill tests: the command is an ``activepref`` CLI invocation started as its own
process group (so a bench's worker processes die with it, as they do on Ctrl-C in a
terminal), SIGKILLed after a delay drawn from a seeded generator, then started again
(``resume`` or the same command) until it finishes. Every kill records where the run
stood (read from ``run.sqlite`` without a lock), so a test can show that its kills landed
inside ENN training, selection, judging, ...
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "activepref"]
SEED_ENV = "ACTIVEPREF_KILL_SEED"  # override the kill schedule's seed to replay or vary it

# What a run does next, given the status of its newest iteration row (store.STATUS_*).
NEXT_STEP = {
    None: "create/select",
    "generated": "embed",
    "embedded": "select",
    "selected": "annotate",
    "annotated": "train",
    "trained": "select",
}


def kill_seed(default: int) -> int:
    return int(os.environ.get(SEED_ENV, default))


def cli(*args: str | Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"activepref {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def timed(*args: str | Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one CLI call that must succeed."""
    start = time.perf_counter()
    cli(*args, env=env)
    return time.perf_counter() - start


def status_invariants(run_dir: Path, previous: dict | None) -> dict:
    """``activepref status`` of a run between kills (read as the CLI reads it, without the
    lock): a state it could really be in, and never less done than after the kill before
    (nothing committed is ever lost). Returns the status, for the next comparison."""
    from dataclasses import asdict

    from activepref.core import runs

    st = asdict(runs.status(run_dir))
    assert 0 <= st["iterations_done"] <= st["iterations_planned"], st
    assert st["current"] in (None, "generated", "embedded", "selected", "annotated"), st
    assert st["stopped"] is None, st
    assert st["pairs"] >= 0 and st["annotations"] >= 0 and st["failures"] >= 0, st
    if previous is not None:
        for key in ("iterations_done", "pairs", "annotations"):
            assert st[key] >= previous[key], (key, previous[key], st[key])
    return st


def run_position(run_dir: Path, live: bool = False) -> str:
    """Where a run directory stands: '<iteration>:<next step>' from its newest iteration row
    (a live run generates where a pool run selects)."""
    db = Path(run_dir) / "run.sqlite"
    if not db.exists():
        return "no run yet"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            created = conn.execute("SELECT value FROM meta WHERE key = 'created'").fetchone()
            if not created:
                return "creating"
            row = conn.execute("SELECT iteration, status FROM iterations ORDER BY iteration DESC LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return "creating"
    if row is None:
        return "0:" + ("generate" if live else NEXT_STEP[None])
    it, status = row
    step = "generate" if live and status == "trained" else NEXT_STEP[status]
    return f"{it + 1 if status == 'trained' else it}:{step}"


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL one life of the command: ``after_s`` seconds after the process started
    or, with ``after_first_call``, after it first reached the test server (its start-up, which
    a loaded machine can stretch several-fold, is then behind it whatever the load)."""

    after_s: float
    after_first_call: bool = False


@dataclass
class KillReport:
    seed: int
    started_at: float = 0.0  # time.monotonic() when the first life started
    delays: list[float] = field(default_factory=list)  # seconds from each killed life's start to its kill
    landed: list[str] = field(default_factory=list)  # position after each kill
    killed_pids: list[int] = field(default_factory=list)
    killed_at: list[float] = field(default_factory=list)  # time.monotonic() of each SIGKILL
    restarts: int = 0
    finished_early: bool = False

    def count(self, step: str) -> int:
        return sum(p.endswith(":" + step) for p in self.landed)

    def __str__(self) -> str:
        return f"kill seed {self.seed}: delays {[round(d, 2) for d in self.delays]} -> landed {self.landed}"


def kill_and_restart(
    start: Sequence[str | Path],
    restart: Sequence[str | Path],
    delays: Sequence[float | Kill],
    position: Callable[[], str],
    seed: int,
    env: dict[str, str] | None = None,
    reset: Callable[[], None] | None = None,
    timeout: float = 300,
    first_call: Callable[[float], bool] | None = None,
    first_call_timeout: float = 120.0,
) -> KillReport:
    """Run ``start``; SIGKILL its process group after each delay in turn (seconds from the
    process start, or a :class:`Kill`), running ``restart`` after every kill; then let
    ``restart`` finish. If a kill left a run being created, ``reset`` (default: nothing) is
    called and ``start`` runs again. ``first_call(t)``: whether the server has had a request
    since ``time.monotonic()`` was t (needed by ``Kill(after_first_call=True)``; a life that
    makes none within ``first_call_timeout`` is killed then).

    Returns what happened; raises AssertionError if the final command fails.
    """
    report = KillReport(seed, started_at=time.monotonic())
    full_env = {**os.environ, **(env or {})}
    command = start
    for delay in delays:
        kill = delay if isinstance(delay, Kill) else Kill(float(delay))
        proc = subprocess.Popen([*CLI, *map(str, command)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env, start_new_session=True)
        born = armed = time.monotonic()
        if kill.after_first_call:
            assert first_call is not None, "Kill(after_first_call=True) needs first_call"
            while proc.poll() is None and not first_call(born) and time.monotonic() - born < first_call_timeout:
                time.sleep(0.01)
            armed = time.monotonic()
        try:
            proc.wait(timeout=max(0.0, armed + kill.after_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            report.killed_at.append(time.monotonic())
            proc.wait(timeout=60)
            _reap_group(proc.pid)
            report.killed_pids.append(proc.pid)
            report.delays.append(report.killed_at[-1] - born)
            report.landed.append(position())
            report.restarts += 1
            command = start if report.landed[-1] in ("no run yet", "creating") else restart
            if report.landed[-1] == "creating" and reset is not None:
                reset()
            continue
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise AssertionError(f"activepref {' '.join(map(str, command))} exited {proc.returncode}:\n{err[-3000:]}")
        report.finished_early = True
        break
    if not report.finished_early:
        cli(*command, env=env, timeout=timeout)
    return report


def _reap_group(pgid: int, wait_s: float = 10.0) -> None:
    """Wait until no process of the killed group is left (spawned workers included)."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def retry_with_shorter_delays(attempt: Callable[[float], KillReport], restarts: int, reset: Callable[[], None]) -> KillReport:
    """``attempt(scale)`` kills a command at delays scaled by ``scale``; on a loaded machine a
    measured baseline can overstate the next run's duration, so when fewer than ``restarts``
    kills landed before it finished, ``reset()`` and try again with the delays halved (twice at
    most). Returns the last attempt's report (the caller asserts on it)."""
    for scale in (1.0, 0.5):
        report = attempt(scale)
        print(report)
        if report.restarts >= restarts:
            return report
        reset()
    report = attempt(0.25)
    print(report)
    return report


def seeded_delays(seed: int, n: int, startup_s: float, work_s: float, share: float = 0.45) -> list[float]:
    """n kill delays: each after the process start-up plus a uniform part of ``share`` of the
    run's work, so successive kills walk through the whole run."""
    rng = np.random.default_rng(seed)
    return [float(startup_s + rng.uniform(0.05, 1.0) * share * work_s) for _ in range(n)]


def seeded_kills(seed: int, n: int, startup_s: float, work_s: float, share: float, startup_share: float = 0.15) -> list[Kill]:
    """n kills of a run that calls a server: about ``startup_share`` of them during start-up
    (from the process start), the rest a uniform part of ``share`` of the run's work after the
    life's first call, so that every such life gets past its start-up and adds to the run."""
    rng = np.random.default_rng(seed)
    kills = []
    for _ in range(n):
        if rng.uniform() < startup_share:
            kills.append(Kill(float(rng.uniform(0.2, 1.0) * startup_s)))
        else:
            kills.append(Kill(float(rng.uniform(0.05, 1.0) * share * work_s), after_first_call=True))
    return kills


def assert_same_final_model(run_dir: Path, base_dir: Path) -> None:
    """The last iteration's ENN checkpoint holds the same tensors bit for bit."""
    from safetensors.torch import load_file

    last = sorted((base_dir / "checkpoints").glob("enn_*.safetensors"))[-1]
    want, got = load_file(str(last)), load_file(str(run_dir / "checkpoints" / last.name))
    assert want.keys() == got.keys()
    assert all(want[k].equal(got[k]) for k in want), f"{run_dir}: the resumed run trained another ensemble"


def remove_tree(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def assert_reveals_accounted_for(audit_lines: list[dict], killed_pids: list[int]) -> int:
    """No stored score revealed twice, except the one a kill interrupted between its reveal
    and its commit (the replay judge has no request cache): every earlier reveal of a
    repeated response came from a killed process, at most one per kill. Returns the repeats."""
    by_response: dict[str, list[int]] = {}
    for e in audit_lines:
        by_response.setdefault(e["response_id"], []).append(e["pid"])
    repeats = 0
    per_kill: dict[int, int] = {}
    for rid, pids in by_response.items():
        for pid in pids[:-1]:
            assert pid in killed_pids, f"{rid} revealed again after a process that was not killed ({pids})"
            per_kill[pid] = per_kill.get(pid, 0) + 1
            repeats += 1
    assert all(n == 1 for n in per_kill.values()), f"a kill accounts for at most one repeated reveal ({per_kill})"
    return repeats


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 120.0, settle_s: float = 0.0,
                 log: Path | None = None) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 20 ms), after ``settle_s``
    more seconds; fail if it exits first or ``timeout_s`` passes. Always reaps the process."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            assert proc.poll() is None, f"the process ended early (exit {proc.returncode}): {tail}"
            assert time.monotonic() < deadline, f"the moment to kill never came within {timeout_s:g} s: {tail}"
            time.sleep(0.02)
        time.sleep(settle_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode} instead of SIGKILL"


IN_FLIGHT_S = 3.0  # an answer not yet committed when the kill landed arrived at most this long before it


def repeated_answers(requests: list, killed_at: list[float], in_flight: int = 2 * 8 + 16, texts_in_flight: int = 16 * 4) -> int:
    """Count the answered requests that reached the server again, and check each repeat: the
    answer before it arrived shortly before a kill (it was in flight, not yet in the cache),
    and no kill explains more repeats than the run has calls in flight (``in_flight``). An
    embeddings request counts per text (a resumed life batches what is left differently): no
    kill may explain more re-embedded texts than a wave holds (``texts_in_flight``)."""
    last_answer: dict[str, float] = {}
    per_kill: dict[tuple[bool, int], int] = {}
    repeats = 0
    for req in sorted(requests, key=lambda r: r.received_at):
        embedding = req.path.rstrip("/") == "/v1/embeddings" and isinstance(req.body, dict)
        if embedding:
            texts = req.body.get("input")
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            keys = [json.dumps([req.body.get("model"), req.body.get("dimensions"), t]) for t in texts]
        else:
            keys = [json.dumps(req.body, sort_keys=True)]
        answered = req.action == "reply"
        for key in keys:
            if key in last_answer:
                before = last_answer[key]
                # (a request already on the wire when the kill landed reaches the server just after it)
                kills = [k for k, t in enumerate(killed_at) if before - 0.5 <= t <= before + IN_FLIGHT_S]
                assert kills, f"an answered request was sent again with no kill in flight (answered at {before:.2f}, kills {killed_at})"
                per_kill[(embedding, kills[0])] = per_kill.get((embedding, kills[0]), 0) + 1
                repeats += 1
            if answered:
                last_answer[key] = req.received_at
    assert all(n <= (texts_in_flight if embedding else in_flight) for (embedding, _), n in per_kill.items()), per_kill
    return repeats
