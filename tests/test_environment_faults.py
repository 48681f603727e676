"""Faults of the machine, not of the input (issue 18, part 2): a damaged run store or request
cache, an unreadable checkpoint, the disk filling up mid-write (RLIMIT_FSIZE), a read-only run
directory and paths with spaces, '#', '%' and non-ASCII characters. Each gives one line that
says what to do and exit code 2, never a traceback; a run resumed after the fault ends with the
dataset of a run that never had it."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from activepref.pools.sources import synthetic_pool, write_pool

CLI = [sys.executable, "-m", "activepref"]
RUN_FLAGS = ("--batch-size", "8", "--method", "dts")


def activepref(*args, env=None, limit_bytes=None, cwd=None):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          preexec_fn=limit if limit_bytes else None, cwd=cwd, timeout=300)


def one_clear_line(proc, *needles):
    """Exit 2, no traceback, and an error line naming every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pool(synthetic_pool(n_prompts=40, candidates=6, dim=16, seed=4), tmp_path_factory.mktemp("pool") / "pool.parquet")


@pytest.fixture(scope="module")
def reference(pool, tmp_path_factory):
    """The export of an uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    assert activepref("run", "--pool", pool, "--out", root / "run", *RUN_FLAGS).returncode == 0
    assert activepref("export", root / "run", "-o", root / "ds.jsonl").returncode == 0
    return (root / "ds.jsonl").read_bytes(), root / "run"


def stopped_run(pool, out: Path, at: str) -> Path:
    """A run SIGKILLed at crash point ``at`` (a partly done run to damage or resume)."""
    proc = activepref("run", "--pool", pool, "--out", out, *RUN_FLAGS, env={"ACTIVEPREF_CRASH_AT": at})
    assert proc.returncode == -9, proc.stderr[-2000:]
    return out


def export_bytes(run_dir: Path, out: Path) -> bytes:
    proc = activepref("export", run_dir, "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out.read_bytes()


@pytest.mark.parametrize("damage", ["garbage header", "truncated"])
def test_a_damaged_run_store_is_one_line_for_every_command(reference, tmp_path, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[1], run_dir)
    db = run_dir / "run.sqlite"
    if damage == "garbage header":
        with open(db, "r+b") as fh:
            fh.write(b"not a database at all, " * 8)
    else:
        for extra in ("run.sqlite-wal", "run.sqlite-shm"):
            (run_dir / extra).unlink(missing_ok=True)
        os.truncate(db, db.stat().st_size // 3)
    for args in (("status", run_dir), ("export", run_dir, "-o", tmp_path / "x.jsonl"), ("resume", run_dir)):
        one_clear_line(activepref(*args), "run.sqlite", "damaged", "backup")
    assert not (tmp_path / "x.jsonl").exists()


def test_a_damaged_request_cache_names_its_file(tmp_path):
    from activepref.core.cache import RequestCache
    from activepref.errors import RunStateError

    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(RunStateError, match="cache.sqlite: the request cache is damaged"):
        RequestCache(path)


def test_an_unreadable_last_checkpoint_is_trained_again_to_the_same_run(pool, reference, tmp_path):
    run_dir = stopped_run(pool, tmp_path / "run", "select.after_commit@2")  # iterations 0 and 1 trained
    checkpoint = run_dir / "checkpoints" / "enn_00001.safetensors"
    os.truncate(checkpoint, 4000)
    proc = activepref("resume", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "enn_00001.safetensors cannot be read" in proc.stderr and "trained again" in proc.stderr
    assert export_bytes(run_dir, tmp_path / "ds.jsonl") == reference[0]
    final = sorted((reference[1] / "checkpoints").glob("*.safetensors"))[-1]
    assert (run_dir / "checkpoints" / final.name).read_bytes() == final.read_bytes()  # the same weights


def test_two_unreadable_checkpoints_are_a_clear_error(pool, tmp_path):
    run_dir = stopped_run(pool, tmp_path / "run", "select.after_commit@2")
    for it in (0, 1):
        (run_dir / "checkpoints" / f"enn_{it:05d}.safetensors").write_bytes(b"{}")
    one_clear_line(activepref("resume", run_dir), "enn_00001.safetensors", "nor the one before it")


@pytest.mark.parametrize("where", ["checkpoint", "run store"])
def test_a_disk_that_fills_mid_run_stops_cleanly_and_the_resume_ends_with_the_same_dataset(pool, reference, tmp_path, where):
    run_dir = stopped_run(pool, tmp_path / "run", "select.after_commit@1")
    if where == "checkpoint":  # the 6 MB ENN checkpoint cannot be written; the SQLite files can
        limit = 1_000_000
    else:  # the run store's write-ahead log cannot grow by another iteration
        limit = max(p.stat().st_size for p in run_dir.glob("run.sqlite*")) + 2000
    line = one_clear_line(activepref("resume", run_dir, limit_bytes=limit), "activepref resume")
    assert ("no space to write" in line) if where == "checkpoint" else ("SQLite write failed" in line)
    assert activepref("resume", run_dir).returncode == 0
    assert export_bytes(run_dir, tmp_path / "ds.jsonl") == reference[0]


def test_an_export_to_a_full_disk_leaves_no_partial_file(tmp_path):
    run_dir = tmp_path / "run"  # the built-in pool's real responses: an export of about 100 KB
    assert activepref("run", "--pool", "builtin", "--out", run_dir, "--batch-size", "64", "--iterations", "1", "--method", "random").returncode == 0
    activepref("status", run_dir)  # SQLite's shared-memory file (32 KB) exists before the limit applies
    out = tmp_path / "ds.jsonl"
    line = one_clear_line(activepref("export", run_dir, "-o", out, limit_bytes=40_000), "no space to write")
    assert "ds.jsonl.tmp" in line
    assert not out.exists() and not (tmp_path / "ds.jsonl.tmp").exists()
    assert activepref("export", run_dir, "-o", out).returncode == 0 and out.stat().st_size > 40_000


def test_paths_with_spaces_and_odd_characters_work_end_to_end(pool, reference, tmp_path):
    odd = tmp_path / "my rüns #1 100%" / "ünïcödé run"
    odd.parent.mkdir()
    pool_copy = odd.parent / "pööl with spaces.parquet"
    shutil.copy(pool, pool_copy)
    stopped_run(pool_copy, odd, "select.after_commit@2")
    assert activepref("status", odd, "--json").returncode == 0
    assert activepref("resume", odd).returncode == 0
    assert export_bytes(odd, odd.parent / "dätaset.jsonl") == reference[0]


@pytest.fixture
def read_only_copy(reference, tmp_path):
    """The finished reference run behind a read-only bind mount (root ignores file modes), or
    with its modes cleared (anyone else); skipped where neither is possible."""
    source = tmp_path / "source"
    shutil.copytree(reference[1], source / "run")
    for extra in ("run.sqlite-wal", "run.sqlite-shm"):  # as a cleanly closed run leaves it
        (source / "run" / extra).unlink(missing_ok=True)
    if os.geteuid() != 0:
        for path in [source / "run", *(source / "run").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        yield source / "run"
        for path in [source / "run", *(source / "run").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {made.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True)
    try:
        if os.access(mount, os.W_OK) and subprocess.run(["touch", str(mount / "probe")], capture_output=True).returncode == 0:
            pytest.skip("the bind mount is writable here")
        yield mount / "run"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_read_only_run_directory_reads_exactly_and_refuses_writes_clearly(reference, read_only_copy, tmp_path):
    assert activepref("status", read_only_copy, "--json").returncode == 0
    assert export_bytes(read_only_copy, tmp_path / "ds.jsonl") == reference[0]
    one_clear_line(activepref("resume", read_only_copy), "cannot write", "read-only")


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_a_request_cache_locked_by_another_process_is_one_line_and_the_run_resumes(pool, tmp_path):
    """Another process holds the request cache's write lock past the 30 s busy wait: the run
    stops with one line naming the lock, and resumed after the lock is gone it ends with the
    dataset of a run that never met the lock. (`-m slow`: it waits out the 30 s.)"""
    import math

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from servers.fake_openai import Action, FakeOpenAIServer

    def judge_script(n: int, body: dict) -> Action:
        return Action.reply("A", top_logprobs=[("A", math.log(0.7)), ("B", math.log(0.3))])

    def config(srv, cache: Path, name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"pool: {pool}\nmethod: dts\nbatch_size: 8\niterations: 3\nseed: 1\ncache_path: '{cache}'\n"
            f"judge: {{kind: pairwise, model: {{backend: openai, model: judge-m, base_url: '{srv.base_url}', max_retries: 0}}}}\n",
            encoding="utf-8")
        return path

    with FakeOpenAIServer(judge_script) as srv:
        assert activepref("run", "-c", config(srv, tmp_path / "calm.sqlite", "calm"), "--out", tmp_path / "calm").returncode == 0
        cache = tmp_path / "locked.sqlite"
        assert activepref("run", "-c", config(srv, cache, "locked"), "--out", tmp_path / "first", "--iterations", "1").returncode == 0
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cache), "90"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            line = one_clear_line(activepref("run", "-c", tmp_path / "locked.yaml", "--out", tmp_path / "run"), "locked")
            assert "another process" in line
        finally:
            holder.kill()
            holder.wait()
        assert activepref("resume", tmp_path / "run").returncode == 0
    assert export_bytes(tmp_path / "run", tmp_path / "a.jsonl") == export_bytes(tmp_path / "calm", tmp_path / "b.jsonl")
