"""The batch journal: what batch jobs a process submitted, kept in the request cache's SQLite
file next to the answers they bring (one transaction per change).

A batch backend (:mod:`activepref.backends.openai_batch`) writes a job here *before* it asks
the provider to create it (state ``submitting``, with our own job id, which also goes into
the batch's metadata), and the provider's batch id as soon as it has one (``submitted``). A
process killed at any point therefore finds, on resume, either a job it can poll, or a job
that may or may not exist at the provider and that it looks up by our id before creating it.
A job is ``finished`` once every line's outcome is written (``ok`` lines are in the request
cache already, ``failed`` ones carry their error, ``retried`` ones moved to a newer job).
Jobs written to a file for an offline run (``activepref judge-file``) wait in ``waiting``
until their results are ``imported``.

Tables::

    batch_jobs   job (our id), provider, endpoint, stage, attempt, state, batch_id,
                 input_file_id, path, status (the provider's last word), created, updated
    batch_lines  job, key (= the request-cache key = the line's custom_id), body (JSON),
                 outcome (NULL pending | ok | failed | retried), error, retryable
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activepref.core.cache import connect_cache_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT UNIQUE NOT NULL, provider TEXT NOT NULL,
    endpoint TEXT NOT NULL, stage TEXT NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL,
    batch_id TEXT, input_file_id TEXT, path TEXT, status TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batch_lines (
    job TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, outcome TEXT, error TEXT, retryable INTEGER,
    PRIMARY KEY (job, key));
CREATE INDEX IF NOT EXISTS batch_lines_key ON batch_lines (key);
"""

SUBMITTING = "submitting"
SUBMITTED = "submitted"
WAITING = "waiting"
IMPORTED = "imported"
FINISHED = "finished"
OPEN_STATES = (SUBMITTING, SUBMITTED, WAITING, IMPORTED)


@dataclass(frozen=True)
class BatchJob:
    """One batch job as journaled. ``attempt``: 0 for a job of first requests, n for the n-th
    retry of failed lines."""

    seq: int
    job: str
    provider: str
    endpoint: str
    stage: str
    attempt: int
    state: str
    batch_id: str | None
    input_file_id: str | None
    path: str | None
    status: str | None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class LineOutcome:
    """A finished line that did not succeed (its error, and whether it was worth retrying)."""

    key: str
    outcome: str
    error: str | None
    retryable: bool


@dataclass(frozen=True)
class BatchLine:
    """One line of a job: its request-cache key (the custom_id) and request body."""

    key: str
    body: dict[str, Any]


class BatchJournal:
    """Thread-safe access to the journal tables in the SQLite file at ``path`` (the request
    cache's file: ``BatchJournal(cache.path)``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect_cache_file(self.path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def _tx(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._conn.execute(sql, args)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ----------------------------------------------------------------- writing
    def new_job(
        self, provider: str, endpoint: str, stage: str, attempt: int, lines: Sequence[BatchLine], state: str, path: str | None = None
    ) -> BatchJob:
        """Journal a job and its lines (before anything is sent) and return it."""
        job = uuid.uuid4().hex
        now = time.time()
        stmts: list[tuple[str, Sequence[Any]]] = [(
            "INSERT INTO batch_jobs (job, provider, endpoint, stage, attempt, state, path, created, updated) VALUES (?,?,?,?,?,?,?,?,?)",
            (job, provider, endpoint, stage, attempt, state, path, now, now),
        )]
        stmts += [
            ("INSERT INTO batch_lines (job, key, body) VALUES (?,?,?)", (job, line.key, json.dumps(line.body, sort_keys=True)))
            for line in lines
        ]
        self._tx(stmts)
        got = self.job(job)
        assert got is not None
        return got

    def update(self, job: str, **fields: Any) -> None:
        """Set ``state``, ``batch_id``, ``input_file_id``, ``path`` or ``status`` of a job."""
        allowed = {"state", "batch_id", "input_file_id", "path", "status"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"update takes {sorted(allowed)}, got {sorted(fields)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._tx([(f"UPDATE batch_jobs SET {cols}, updated = ? WHERE job = ?", (*fields.values(), time.time(), job))])

    def finish(self, job: str, ok: Iterable[str], failed: Iterable[LineOutcome], retried: Iterable[str]) -> None:
        """Write every line's outcome and mark the job finished, in one transaction."""
        stmts: list[tuple[str, Sequence[Any]]] = [
            ("UPDATE batch_lines SET outcome = 'ok', error = NULL WHERE job = ? AND key = ?", (job, k)) for k in ok
        ]
        stmts += [
            ("UPDATE batch_lines SET outcome = ?, error = ?, retryable = ? WHERE job = ? AND key = ?",
             (f.outcome, f.error, int(f.retryable), job, f.key))
            for f in failed
        ]
        stmts += [("UPDATE batch_lines SET outcome = 'retried' WHERE job = ? AND key = ?", (job, k)) for k in retried]
        stmts.append(("UPDATE batch_jobs SET state = ?, updated = ? WHERE job = ?", (FINISHED, time.time(), job)))
        self._tx(stmts)

    def record_import(self, job: str, failed: Iterable[LineOutcome], ok: Iterable[str]) -> None:
        """Results of a file job came back (``activepref judge-file import``): note failed
        lines and mark the job imported (the ok answers went to the request cache)."""
        stmts: list[tuple[str, Sequence[Any]]] = [
            ("UPDATE batch_lines SET outcome = 'ok', error = NULL WHERE job = ? AND key = ?", (job, k)) for k in ok
        ]
        stmts += [
            ("UPDATE batch_lines SET outcome = ?, error = ?, retryable = ? WHERE job = ? AND key = ? AND outcome IS NOT 'ok'",
             (f.outcome, f.error, int(f.retryable), job, f.key))
            for f in failed
        ]
        stmts.append(("UPDATE batch_jobs SET state = ?, updated = ? WHERE job = ?", (IMPORTED, time.time(), job)))
        self._tx(stmts)

    # ----------------------------------------------------------------- reading
    def _jobs(self, where: str, args: Sequence[Any]) -> list[BatchJob]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, job, provider, endpoint, stage, attempt, state, batch_id, input_file_id, path, status "
                f"FROM batch_jobs {where} ORDER BY seq", args
            ).fetchall()
        return [BatchJob(*row) for row in rows]

    def job(self, job: str) -> BatchJob | None:
        found = self._jobs("WHERE job = ?", (job,))
        return found[0] if found else None

    def jobs(self, state: str | None = None) -> list[BatchJob]:
        return self._jobs("WHERE state = ?", (state,)) if state else self._jobs("", ())

    def latest_for(self, endpoint: str, keys: Iterable[str]) -> dict[str, BatchJob]:
        """key -> the newest job of ``endpoint`` that holds it (keys in no job are left out)."""
        out: dict[str, BatchJob] = {}
        jobs: dict[str, BatchJob] = {}
        keys = list(keys)
        with self._lock:
            rows = []
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._conn.execute(
                    f"SELECT l.key, j.job, j.seq FROM batch_lines l JOIN batch_jobs j ON j.job = l.job "
                    f"WHERE j.endpoint = ? AND l.key IN ({marks})", (endpoint, *chunk)
                ).fetchall()
        best: dict[str, tuple[int, str]] = {}
        for key, job, seq in rows:
            if key not in best or seq > best[key][0]:
                best[key] = (seq, job)
        for key, (_, job) in best.items():
            if job not in jobs:
                found = self.job(job)
                assert found is not None
                jobs[job] = found
            out[key] = jobs[job]
        return out

    def lines(self, job: str) -> list[BatchLine]:
        with self._lock:
            rows = self._conn.execute("SELECT key, body FROM batch_lines WHERE job = ? ORDER BY rowid", (job,)).fetchall()
        return [BatchLine(k, json.loads(b)) for k, b in rows]

    def outcomes(self, job: str) -> dict[str, LineOutcome]:
        """key -> outcome of the job's lines that have one."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, outcome, error, retryable FROM batch_lines WHERE job = ? AND outcome IS NOT NULL", (job,)
            ).fetchall()
        return {k: LineOutcome(k, o, e, bool(r)) for k, o, e, r in rows}

    def job_of_line(self, key: str) -> list[BatchJob]:
        """Jobs (oldest first) that hold a line with this key."""
        with self._lock:
            rows = self._conn.execute("SELECT job FROM batch_lines WHERE key = ?", (key,)).fetchall()
        found = [self.job(r[0]) for r in rows]
        return sorted((j for j in found if j is not None), key=lambda j: j.seq)
