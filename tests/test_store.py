"""The run store (activepref.core.store.RunStore): directory lock, read-only access, WAL, atomic create."""

from __future__ import annotations

import dataclasses
import gc
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from activepref.config import load_config
from activepref.core.store import SCHEMA_VERSION, PreferenceRecord, RunStore
from activepref.errors import ActivePrefError, RunLockedError, RunStateError
from activepref.pools.sources import synthetic_pool

N_PROMPTS = 6


@pytest.fixture
def pool():
    return synthetic_pool(n_prompts=N_PROMPTS, candidates=4, dim=4, seed=0, min_candidates=2)


def create(run_dir, pool):
    return RunStore.create(run_dir, load_config().model_dump_json(), pool, np.array([0]), np.arange(1, N_PROMPTS))


@pytest.fixture
def run_dir(tmp_path, pool):
    d = tmp_path / "run"
    create(d, pool).close()
    return d


def sql_count(run_dir, table: str) -> int:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


# -- lock ----------------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_refused(run_dir):
    first = RunStore.open(run_dir)
    try:
        with pytest.raises(RunLockedError) as info:
            RunStore.open(run_dir)
        msg = str(info.value)
        assert str(run_dir) in msg
        assert "in use by another activepref process" in msg
        assert f"(pid {os.getpid()})" in msg
    finally:
        first.close()


def test_create_is_refused_while_the_store_is_open(tmp_path, pool):
    d = tmp_path / "run"
    store = create(d, pool)
    try:
        with pytest.raises(RunLockedError):
            create(d, pool)
    finally:
        store.close()


def test_lock_is_released_on_close(run_dir):
    RunStore.open(run_dir).close()
    second = RunStore.open(run_dir)
    second.close()
    with RunStore.open(run_dir) as third:
        assert third.count("prompts") == N_PROMPTS
    RunStore.open(run_dir).close()  # the context manager closed it too


def test_lock_held_by_another_process(run_dir):
    script = textwrap.dedent(
        """
        import sys, time
        from activepref.core.store import RunStore
        store = RunStore.open(sys.argv[1])
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as info:
            RunStore.open(run_dir)
        assert f"(pid {child.pid})" in str(info.value)
        assert "wait for it or stop it" in str(info.value)
        # reading needs no lock
        ro = RunStore.open_readonly(run_dir)
        try:
            assert ro.count("responses") == sql_count(run_dir, "responses")
        finally:
            ro.close()
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    RunStore.open(run_dir).close()  # the dead process's lock is gone


def test_open_readonly_while_locked(run_dir, pool):
    writer = RunStore.open(run_dir)
    try:
        reader = RunStore.open_readonly(run_dir)
        try:
            assert reader.count("prompts") == N_PROMPTS
            assert reader.count("responses") == len(pool.responses)
            assert reader.meta("created") == "1"
            with pytest.raises(sqlite3.OperationalError):  # read-only really is read-only
                reader.conn.execute("DELETE FROM prompts")
        finally:
            reader.close()
    finally:
        writer.close()


def test_readonly_does_not_take_the_lock(run_dir):
    reader = RunStore.open_readonly(run_dir)
    try:
        RunStore.open(run_dir).close()
    finally:
        reader.close()


def test_run_locked_error_is_an_activepref_error():
    assert issubclass(RunLockedError, ActivePrefError)


# -- sqlite ---------------------------------------------------------------------------------


def test_wal_mode(run_dir):
    with RunStore.open(run_dir) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = sqlite3.connect(run_dir / "run.sqlite")  # persistent: any new connection sees it
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_create_imports_the_whole_pool(tmp_path, pool):
    d = tmp_path / "run"
    create(d, pool).close()
    ro = RunStore.open_readonly(d)
    try:
        assert ro.count("prompts") == len(pool.prompts) == N_PROMPTS
        assert ro.count("responses") == len(pool.responses)
        assert ro.count("scores") == 0
        assert ro.count("preferences") == 0
        assert ro.meta("created") == "1"
        assert ro.meta("schema_version") == str(SCHEMA_VERSION)
        assert ro.meta("pool_source") == pool.source
        responses, prompt_idx = ro.responses()
        assert [r.id for r in responses] == [r.id for r in pool.responses]
        assert prompt_idx.tolist() == list(pool.prompt_index)
        assert [p.id for p, _, _ in ro.prompts()] == [p.id for p in pool.prompts]
        assert ro.eval_prompts() == [0]
        assert ro.train_prompt_order() == [1, 2, 3, 4, 5]
        np.testing.assert_array_equal(ro.features(), pool.features)
        np.testing.assert_allclose(ro.oracle(), pool.oracle)
    finally:
        ro.close()
    assert sorted(p.name for p in d.iterdir()) == sorted(
        p for p in ("checkpoints", "features.npy", "lock", "run.sqlite", "run.sqlite-wal", "run.sqlite-shm")
        if (d / p).exists()
    )
    assert not (d / "features.npy.tmp").exists()


def test_create_twice_is_refused(run_dir, pool):
    with pytest.raises(RunStateError) as info:
        create(run_dir, pool)
    assert "already holds a run" in str(info.value)
    assert f"activepref resume {run_dir}" in str(info.value)


def test_open_of_a_directory_without_a_run(tmp_path):
    with pytest.raises(RunStateError) as info:
        RunStore.open(tmp_path)
    assert str(info.value) == f"{tmp_path} is not an activepref run directory (no run.sqlite)"
    with pytest.raises(RunStateError):
        RunStore.open_readonly(tmp_path)


def broken_pool(pool):
    """The pool with a duplicated response id: the INSERT of responses fails after the prompts went in."""
    responses = list(pool.responses)
    responses[-1] = dataclasses.replace(responses[-1], id=responses[0].id)
    return dataclasses.replace(pool, responses=responses)


def test_create_transaction_is_atomic(tmp_path, pool):
    d = tmp_path / "run"
    with pytest.raises(sqlite3.IntegrityError):
        create(d, broken_pool(pool))
    gc.collect()
    # nothing of the data went in: not the prompts inserted before the failing statement, nor meta
    assert sql_count(d, "prompts") == 0
    assert sql_count(d, "responses") == 0
    assert sql_count(d, "meta") == 0
    with pytest.raises(RunStateError) as info:
        RunStore.open_readonly(d)
    assert "interrupted while it was being created" in str(info.value)


def test_failed_create_releases_the_lock(tmp_path, pool):
    d = tmp_path / "run"
    with pytest.raises(sqlite3.IntegrityError) as info:
        create(d, broken_pool(pool))
    assert info.value is not None  # the exception is still referenced, as in a notebook's last traceback
    with pytest.raises(RunStateError) as second:  # not RunLockedError
        RunStore.open(d)
    assert "interrupted while it was being created" in str(second.value)


# -- replay-buffer order ----------------------------------------------------------------------
def _select_and_commit(store: RunStore, it: int, prompts: list[int], rows: list[tuple]) -> None:
    """rows: (prompt, chosen, rejected, score_chosen, score_rejected, method)."""
    store.commit_selection(it, prompts, {"kind": "design", "pairs": []})
    store.commit_preferences(it, [PreferenceRecord(it, *r) for r in rows], {"ok": len(rows)})


def test_replay_pairs_keep_the_commit_order_not_the_prompt_order(run_dir):
    """The buffer order is the order rows were committed in (the batch's own prompt order),
    across iterations; the export order (preference_rows) stays by iteration and prompt."""
    with RunStore.open(run_dir) as store:
        _select_and_commit(store, 0, [4, 2], [(4, 12, 13, 1.0, 0.0, "m"), (2, 6, 7, 1.0, 0.0, "m")])
        _select_and_commit(store, 1, [5, 1, 3], [(5, 15, 14, 1.0, 0.0, "m"), (1, 3, 2, 1.0, 0.0, "m"), (3, 9, 8, 1.0, 0.0, "m")])
        assert store.replay_pairs().tolist() == [[12, 13], [6, 7], [15, 14], [3, 2], [9, 8]]
        assert store.replay_pairs(iteration=1).tolist() == [[15, 14], [3, 2], [9, 8]]
        assert store.replay_pairs(iteration=7).shape == (0, 2)
        assert [p.prompt_idx for p in store.preference_rows()] == [2, 4, 1, 3, 5]
    with RunStore.open(run_dir) as store:  # a new process reads the same order
        assert store.replay_pairs().tolist() == [[12, 13], [6, 7], [15, 14], [3, 2], [9, 8]]


def test_a_schema_2_run_is_upgraded_in_place_with_the_old_resume_order(run_dir):
    with RunStore.open(run_dir) as store:
        _select_and_commit(store, 0, [4, 2], [(4, 12, 13, 1.0, 0.0, "m"), (2, 6, 7, 1.0, 0.0, "m")])
    conn = sqlite3.connect(run_dir / "run.sqlite")  # rewrite the table as schema 2 had it
    conn.executescript(
        "CREATE TABLE p2 (iteration INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, chosen_idx INTEGER NOT NULL, "
        "rejected_idx INTEGER NOT NULL, score_chosen REAL, score_rejected REAL, method TEXT NOT NULL, "
        "pair_index INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (iteration, prompt_idx, pair_index));"
        "INSERT INTO p2 SELECT iteration, prompt_idx, chosen_idx, rejected_idx, score_chosen, score_rejected, method, pair_index "
        "FROM preferences ORDER BY buffer_position; DROP TABLE preferences; ALTER TABLE p2 RENAME TO preferences;"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    conn.close()
    with RunStore.open(run_dir) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        assert store.replay_pairs().tolist() == [[6, 7], [12, 13]]  # schema 2 resumed by prompt
        _select_and_commit(store, 1, [5], [(5, 15, 14, 1.0, 0.0, "m")])
        assert store.replay_pairs().tolist() == [[6, 7], [12, 13], [15, 14]]


def test_a_schema_3_run_gains_the_comparison_tables_and_keeps_its_rows(run_dir):
    from activepref.core.store import ComparisonRecord

    with RunStore.open(run_dir) as store:
        _select_and_commit(store, 0, [4, 2], [(4, 12, 13, 1.0, 0.0, "m"), (2, 6, 7, 1.0, 0.0, "m")])
    conn = sqlite3.connect(run_dir / "run.sqlite")  # as schema 3 had it: no comparison tables
    conn.executescript(
        "DROP TABLE comparisons; DROP TABLE comparison_failures; ALTER TABLE prompts DROP COLUMN meta;"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    conn.close()
    with RunStore.open(run_dir) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "7"
        assert store.replay_pairs().tolist() == [[12, 13], [6, 7]]
        assert store.comparisons("j") == {} and store.count("comparisons") == 0
        store.commit_comparisons(1, "j", [ComparisonRecord(3, 2, 0.25, False)], [(8, 9, "no A/B")])
        assert store.comparisons("j") == {(3, 2): ComparisonRecord(3, 2, 0.25, False)}
        assert store.comparison_failures("j") == {(8, 9): "no A/B"}
        assert store.position_consistency() == (1, 0)


def test_a_schema_5_run_gains_the_cache_hit_token_counters(run_dir):
    stats = {"judge": {"calls": 3, "cache_hits": 1, "failures": 0, "prompt_tokens": 30, "completion_tokens": 3,
                       "cached_prompt_tokens": 0}}
    with RunStore.open(run_dir) as store:
        with store.transaction() as cur:
            store._insert_stats(cur, 0, stats)
    conn = sqlite3.connect(run_dir / "run.sqlite")  # as schema 5 had it
    conn.executescript(
        "ALTER TABLE call_stats DROP COLUMN hit_prompt_tokens; ALTER TABLE call_stats DROP COLUMN hit_completion_tokens;"
        "UPDATE meta SET value = '5' WHERE key = 'schema_version';"
    )
    conn.close()
    with RunStore.open_readonly(run_dir) as ro:  # status reads an old run without upgrading it
        assert ro.call_stats()["judge"] == {**stats["judge"], "hit_prompt_tokens": 0, "hit_completion_tokens": 0}
    with RunStore.open(run_dir) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        with store.transaction() as cur:
            store._insert_stats(cur, 1, {"judge": {**stats["judge"], "hit_prompt_tokens": 10, "hit_completion_tokens": 1}})
        assert store.call_stats()["judge"]["hit_prompt_tokens"] == 10
        assert store.call_stats_by_iteration("judge")[0]["calls"] == 3


def test_a_schema_6_run_gains_the_annotation_tables(run_dir):
    from activepref.annotate.queue import AnnotationQueue

    conn = sqlite3.connect(run_dir / "run.sqlite")  # as schema 6 had it: no annotation tables
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'annotat%'").fetchall():
        conn.execute(f"DROP TABLE {name}")
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(RunStateError, match="schema 6"):
        AnnotationQueue.open(run_dir)  # the app refuses an old store rather than writing around it
    with RunStore.open(run_dir) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        queue = AnnotationQueue(store.conn)
        assert queue.add_tasks(0, [(1, 2)], 1, 3) == 1
    AnnotationQueue.open(run_dir).close()


def test_run_data_reads_response_texts_from_the_store_on_demand(run_dir):
    """RunData keeps prompt idx and model codes per response, not the texts: a response read
    by idx equals the store's full listing, and model names come back by index."""
    from activepref.core.candidates import CandidateSettings, ModelColumn, ResponseTable, RunData

    with RunStore.open(run_dir) as store:
        listed, prompt_idx = store.responses()
        data = RunData(store, CandidateSettings(True, "cpu", None, 0))
        assert isinstance(data.responses, ResponseTable) and isinstance(data.models, ModelColumn)
        assert len(data.responses) == len(listed) == store.response_count()
        np.testing.assert_array_equal(data.response_prompt, prompt_idx)
        for i in (0, len(listed) // 2, len(listed) - 1):
            assert data.responses[i] == listed[i]
        idx = np.array([[0, 1], [len(listed) - 1, 2]])
        assert data.models[idx].tolist() == [[listed[j].model for j in row] for row in idx]
        with pytest.raises(IndexError):
            data.responses[len(listed)]
