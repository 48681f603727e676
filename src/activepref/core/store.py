"""The run store: one SQLite database (WAL) per run directory, plus a features matrix and
ENN checkpoints beside it. Every method that writes is one transaction.

Layout of a run directory::

    run.sqlite              prompts, responses, hidden pool scores, scores, preferences,
                            iterations (status + metrics), judge failures, run config
    features.npy            [n_responses, d] float32, rows = response idx (absent when the run
                            references the pool's own .npy: meta ``features_file`` keeps its
                            path, size, mtime and SHA-256; see activepref.core.features)
    feature_stats.npz       per-dimension mean and scale the ENN's inputs are z-scored with
    prompt_features.npy     [n_prompts, q] float32 prompt-only embeddings (optional)
    checkpoints/enn_XXXXX.safetensors   ENN state after iteration XXXXX
    lock                    held (flock) by the one process working on the run
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from activepref.annotate.queue import SCHEMA as ANNOTATION_SCHEMA
from activepref.core.features import FileIdentity, NpyLayout, verify_identity, write_feature_stats
from activepref.core.transactions import immediate_transaction
from activepref.errors import RunLockedError, RunStateError
from activepref.pools.reader import Pool
from activepref.pools.records import Prompt, Response

log = logging.getLogger(__name__)

SCHEMA_VERSION = 7  # 2: several (design-selected) pairs per prompt and iteration; 3: preferences.buffer_position;
# 4: comparisons; 5: prompts.meta (a prompt's verifiable instructions); 6: call_stats.hit_*_tokens,
# model_choices and prompt_vectors (model-level acquisition); 7: human annotation tables
# (activepref.annotate.queue)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    idx INTEGER PRIMARY KEY, prompt_id TEXT UNIQUE NOT NULL, text TEXT NOT NULL,
    messages TEXT, split TEXT NOT NULL, position INTEGER, meta TEXT);
CREATE TABLE IF NOT EXISTS responses (
    idx INTEGER PRIMARY KEY, response_id TEXT UNIQUE NOT NULL, prompt_idx INTEGER NOT NULL,
    model TEXT NOT NULL, principle TEXT, system_prompt TEXT, text TEXT NOT NULL, meta TEXT);
CREATE TABLE IF NOT EXISTS features (response_idx INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS generation_failures (
    iteration INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, model TEXT NOT NULL, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS call_stats (
    iteration INTEGER NOT NULL, stage TEXT NOT NULL, calls INTEGER NOT NULL, cache_hits INTEGER NOT NULL,
    failures INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL, hit_prompt_tokens INTEGER NOT NULL DEFAULT 0,
    hit_completion_tokens INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pool_scores (
    response_idx INTEGER PRIMARY KEY, score REAL, aspects TEXT, oracle REAL);
CREATE TABLE IF NOT EXISTS scores (
    response_idx INTEGER NOT NULL, judge TEXT NOT NULL, value REAL NOT NULL, aspects TEXT,
    iteration INTEGER NOT NULL, PRIMARY KEY (response_idx, judge));
CREATE TABLE IF NOT EXISTS judge_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, response_idx INTEGER NOT NULL, judge TEXT NOT NULL,
    iteration INTEGER NOT NULL, error TEXT NOT NULL, UNIQUE (response_idx, judge));
CREATE TABLE IF NOT EXISTS comparisons (
    first_idx INTEGER NOT NULL, second_idx INTEGER NOT NULL, judge TEXT NOT NULL, p_first REAL NOT NULL,
    consistent INTEGER, iteration INTEGER NOT NULL, PRIMARY KEY (first_idx, second_idx, judge));
CREATE TABLE IF NOT EXISTS comparison_failures (
    first_idx INTEGER NOT NULL, second_idx INTEGER NOT NULL, judge TEXT NOT NULL, iteration INTEGER NOT NULL,
    error TEXT NOT NULL, PRIMARY KEY (first_idx, second_idx, judge));
CREATE TABLE IF NOT EXISTS iterations (
    iteration INTEGER PRIMARY KEY, status TEXT NOT NULL, prompt_idxs TEXT NOT NULL,
    proposal TEXT, pair_status TEXT, metrics TEXT);
CREATE TABLE IF NOT EXISTS model_choices (
    iteration INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, models TEXT NOT NULL, PRIMARY KEY (iteration, prompt_idx));
CREATE TABLE IF NOT EXISTS prompt_vectors (prompt_idx INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS preferences (
    iteration INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, chosen_idx INTEGER NOT NULL,
    rejected_idx INTEGER NOT NULL, score_chosen REAL, score_rejected REAL, method TEXT NOT NULL,
    pair_index INTEGER NOT NULL DEFAULT 0, buffer_position INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (iteration, prompt_idx, pair_index));
""" + ANNOTATION_SCHEMA

STAT_COUNTERS = (
    "calls", "cache_hits", "failures", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
    "hit_prompt_tokens", "hit_completion_tokens",
)

STATUS_GENERATED = "generated"
STATUS_EMBEDDED = "embedded"
STATUS_SELECTED = "selected"
STATUS_ANNOTATED = "annotated"
STATUS_TRAINED = "trained"


def _save_float32(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a float32 .npy at ``path``, atomically (via a .tmp beside it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(path)


def _usage_meta(pool: Pool, i: int) -> str | None:
    """A pool response's generation usage as response meta (what costs count), if the pool has it."""
    if pool.tokens is None:
        return None
    p, c = (int(v) for v in pool.tokens[i])
    return json.dumps({k: v for k, v in (("prompt_tokens", p), ("completion_tokens", c)) if v >= 0})


class PreferenceRecord(NamedTuple):
    """One preference pair as the run keeps it: rows into the run's prompts and responses.

    prompt_idx is the chosen response's prompt (a cross-prompt comparison's rejected response
    belongs to another prompt); pair_index orders the pairs of one prompt (a batch design may
    pick several); scores are the judge's, None where a rule decided without one."""

    iteration: int
    prompt_idx: int
    chosen_idx: int
    rejected_idx: int
    score_chosen: float | None
    score_rejected: float | None
    method: str
    pair_index: int = 0


class ScoreRecord(NamedTuple):
    """A scoring judge's verdict on one response (details: per-aspect scores/distributions)."""

    response_idx: int
    value: float
    details: dict[str, Any] | None = None


class ComparisonRecord(NamedTuple):
    """A comparing judge's verdict on a pair, as asked: P(first better); consistent: asked in
    both orders, whether the two answers agreed (None when asked in one order)."""

    first_idx: int
    second_idx: int
    p_first: float
    consistent: bool | None = None


class JudgeFailure(NamedTuple):
    """A response the judge could not score, after its retries."""

    response_idx: int
    error: str


class GeneratedResponse(NamedTuple):
    """A new candidate of a live run: the response, its prompt row and its call metadata."""

    response: Response
    prompt_idx: int
    meta: dict[str, Any]


class GenerationFailure(NamedTuple):
    prompt_idx: int
    model: str
    error: str


@dataclass(frozen=True)
class IterationRecord:
    iteration: int
    status: str
    prompt_idxs: list[int]
    proposal: dict[str, Any] | None
    metrics: dict[str, Any] | None
    pair_status: dict[str, int] | None = None  # counts of ok / tie / failed / skipped pairs, once annotated


def _damaged(run_dir: Path, exc: sqlite3.DatabaseError) -> Exception:
    """The error for a run.sqlite SQLite cannot read (OperationalError faults pass through: the CLI names them)."""
    if isinstance(exc, sqlite3.OperationalError):
        return exc
    return RunStateError(
        f"{run_dir / 'run.sqlite'}: the run store is damaged ({exc}); restore it from a backup, or start the run again "
        f"in a new directory (with the same request cache, no answered model call is paid again)"
    )


def lock_run_dir(run_dir: Path) -> Any:
    """Take the run directory's exclusive ``flock`` (file ``lock`` holds the owner's pid); a
    second process gets a RunLockedError naming that pid. Released by closing the handle."""
    fh = open(run_dir / "lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunLockedError(f"{run_dir} is in use by another activepref process (pid {holder}); wait for it or stop it") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def unlock_run_dir(fh: Any) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit), WAL, fsync on commit, foreign keys."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


_Held = TypeVar("_Held", bound="LockedSqliteDir")


class LockedSqliteDir:
    """A run directory held by one process: its SQLite connection and its flock. Closing
    releases both; ``transaction()`` is one ``BEGIN IMMEDIATE ... COMMIT`` (rolled back on
    any exception, Ctrl-C included)."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fh: Any) -> None:
        self.run_dir = run_dir
        self.conn = conn
        self._lock_fh = lock_fh

    def close(self) -> None:
        self.conn.close()
        if self._lock_fh is not None:
            unlock_run_dir(self._lock_fh)
            self._lock_fh = None

    def __enter__(self: _Held) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state of the store (one SQLite read
        transaction), however many queries it takes, while another process keeps writing."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with immediate_transaction(self.conn) as cur:
            yield cur


class RunStore(LockedSqliteDir):
    """SQLite-backed state of one run. Open with :meth:`create` or :meth:`open`; the
    directory lock is held until :meth:`close`."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fh: Any) -> None:
        super().__init__(run_dir, conn, lock_fh)
        self._features: np.ndarray | None = None
        self._features_checked = False

    # -- opening -----------------------------------------------------------------------
    @staticmethod
    def _lock(run_dir: Path) -> Any:
        return lock_run_dir(run_dir)

    @classmethod
    def _connect(cls, run_dir: Path) -> sqlite3.Connection:
        return connect_sqlite(run_dir / "run.sqlite")

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        return (Path(run_dir) / "run.sqlite").exists()

    @classmethod
    def open(cls, run_dir: str | Path) -> RunStore:
        run_dir = Path(run_dir)
        if not cls.exists(run_dir):
            raise RunStateError(f"{run_dir} is not an activepref run directory (no run.sqlite)")
        lock = cls._lock(run_dir)
        try:
            store = cls(run_dir, cls._connect(run_dir), lock)
            created = store.meta("created")
        except sqlite3.DatabaseError as exc:
            unlock_run_dir(lock)
            raise _damaged(run_dir, exc) from None
        if created != "1":
            store.close()
            raise RunStateError(f"{run_dir}: the run was interrupted while it was being created; delete the directory and start again")
        version = store.meta("schema_version")
        if version == "2":
            store._upgrade_from_2()
            version = store.meta("schema_version")
        if version == "3":
            store._upgrade_from_3()
            version = store.meta("schema_version")
        if version == "4":
            store._upgrade_from_4()
            version = store.meta("schema_version")
        if version == "5":
            store._upgrade_from_5()
            version = store.meta("schema_version")
        if version == "6":
            store._upgrade_from_6()
            version = store.meta("schema_version")
        if version != str(SCHEMA_VERSION):
            store.close()
            raise RunStateError(f"{run_dir}: run store schema {version} is not {SCHEMA_VERSION} (made by another activepref version)")
        return store

    @classmethod
    def open_readonly(cls, run_dir: str | Path) -> RunStore:
        """Read a run without taking its lock (status and export work while a run is going)."""
        run_dir = Path(run_dir)
        if not cls.exists(run_dir):
            raise RunStateError(f"{run_dir} is not an activepref run directory (no run.sqlite)")
        path = run_dir / "run.sqlite"
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            store, created = cls._read_only(run_dir, uri)
        except sqlite3.OperationalError as exc:
            # A read-only directory: SQLite cannot make the shared-memory file WAL readers need.
            # Without a write-ahead log holding commits the database file alone is the whole
            # run, and an immutable read is exact; with one, it would silently miss commits.
            if "unable to open" not in str(exc):
                raise  # disk I/O error, locked, ...: the CLI names the fault
            wal = run_dir / "run.sqlite-wal"
            if wal.exists() and wal.stat().st_size > 0:
                raise RunStateError(
                    f"{path}: cannot be read here ({exc}); if its directory is read-only, copy the run directory "
                    f"somewhere writable and read that copy"
                ) from None
            store, created = cls._read_only(run_dir, uri + "&immutable=1")
        if created != "1":
            store.close()
            raise RunStateError(f"{run_dir}: the run was interrupted while it was being created; delete the directory and start again")
        return store

    @classmethod
    def _read_only(cls, run_dir: Path, uri: str) -> tuple[RunStore, str | None]:
        """A store on ``uri`` and its 'created' mark; a file SQLite cannot read is closed and
        reported as damaged (an OperationalError, a fault of the machine, passes through)."""
        store = cls(run_dir, sqlite3.connect(uri, uri=True), None)
        try:
            return store, store.meta("created")
        except sqlite3.DatabaseError as exc:
            store.close()
            raise _damaged(run_dir, exc) from None

    @classmethod
    def create(cls, run_dir: str | Path, config_json: str, pool: Pool, eval_prompts: np.ndarray, train_order: np.ndarray) -> RunStore:
        """Import the pool and config into a new run directory (one transaction).

        eval_prompts: prompt indices held out; train_order: prompt indices in annotation order.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = cls._lock(run_dir)
        if cls.exists(run_dir):
            lock.close()
            raise RunStateError(f"{run_dir} already holds a run; use `activepref resume {run_dir}` or choose another --out")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        if pool.responses and pool.feature_scan is None:  # a pool run; live runs embed as they go (features table)
            _save_float32(run_dir / "features.npy", pool.features)
        if pool.responses and pool.feature_scan is not None:  # a pool's .npy: referenced, never copied
            write_feature_stats(run_dir, pool.feature_scan.mean, pool.feature_scan.std)
        if pool.prompt_features is not None:  # prompt-only embeddings, rows = prompt idx
            _save_float32(run_dir / "prompt_features.npy", pool.prompt_features)
        conn = cls._connect(run_dir)
        store = cls(run_dir, conn, lock)
        try:
            store._import(config_json, pool, eval_prompts, train_order)
        except BaseException:
            store.close()
            raise
        return store

    def _upgrade_from_2(self) -> None:
        """Schema 2 -> 3: give every preference row its replay-buffer position.

        Schema 2 kept no buffer order; a resume under it rebuilt the buffer by (iteration,
        prompt, pair), so that order is the one the rows get. A run begun under schema 2
        therefore resumes as it would have before (not necessarily identical to an
        uninterrupted run; runs begun under schema 3 are)."""
        log.warning("%s: run store made by an older activepref (schema 2); upgrading it to schema 3", self.run_dir)
        with self.transaction() as cur:
            rows = cur.execute("SELECT rowid FROM preferences ORDER BY iteration, prompt_idx, pair_index").fetchall()
            cur.execute("ALTER TABLE preferences ADD COLUMN buffer_position INTEGER")
            cur.executemany("UPDATE preferences SET buffer_position = ? WHERE rowid = ?", [(pos, rowid) for pos, (rowid,) in enumerate(rows)])
            cur.execute("CREATE UNIQUE INDEX preferences_buffer_position ON preferences (buffer_position)")
            cur.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    def _upgrade_from_3(self) -> None:
        """Schema 3 -> 4: the tables of pairwise judgements (empty in an older run)."""
        self.conn.executescript(SCHEMA)  # CREATE TABLE IF NOT EXISTS: only the new tables are made
        with self.transaction() as cur:
            cur.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")

    def _upgrade_from_4(self) -> None:
        """Schema 4 -> 5: prompts gain their metadata column (empty in an older run)."""
        with self.transaction() as cur:
            if "meta" not in {row[1] for row in cur.execute("PRAGMA table_info(prompts)")}:
                cur.execute("ALTER TABLE prompts ADD COLUMN meta TEXT")
            cur.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")

    def _upgrade_from_5(self) -> None:
        """Schema 5 -> 6: call statistics gain the tokens of cache hits (0 in an older run); the
        model-level tables (empty)."""
        self.conn.executescript(SCHEMA)  # CREATE TABLE IF NOT EXISTS: only the new tables are made
        with self.transaction() as cur:
            have = {row[1] for row in cur.execute("PRAGMA table_info(call_stats)")}
            for col in ("hit_prompt_tokens", "hit_completion_tokens"):
                if col not in have:
                    cur.execute(f"ALTER TABLE call_stats ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")
            cur.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")

    def _upgrade_from_6(self) -> None:
        """Schema 6 -> 7: the human annotation tables (empty in an older run)."""
        self.conn.executescript(SCHEMA)  # CREATE TABLE IF NOT EXISTS: only the new tables are made
        with self.transaction() as cur:
            cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _import(self, config_json: str, pool: Pool, eval_prompts: np.ndarray, train_order: np.ndarray) -> None:
        store, conn = self, self.conn
        position = {int(p): i for i, p in enumerate(train_order)}
        held_out = {int(p) for p in eval_prompts}
        conn.executescript(SCHEMA)  # executescript commits on its own; the data goes in one transaction below
        with store.transaction() as cur:
            cur.executemany(
                "INSERT INTO prompts (idx, prompt_id, text, messages, split, position, meta) VALUES (?,?,?,?,?,?,?)",
                [
                    (i, p.id, p.text, json.dumps(list(p.messages)) if p.messages else None,
                     "eval" if i in held_out else "train", position.get(i), json.dumps(p.meta) if p.meta else None)
                    for i, p in enumerate(pool.prompts)
                ],
            )
            cur.executemany(
                "INSERT INTO responses VALUES (?,?,?,?,?,?,?,?)",
                [
                    (i, r.id, int(pool.prompt_index[i]), r.model, r.principle, r.system_prompt, r.text, _usage_meta(pool, i))
                    for i, r in enumerate(pool.responses)
                ],
            )
            aspects = pool.aspect_scores
            cur.executemany(
                "INSERT INTO pool_scores VALUES (?,?,?,?)",
                [
                    (
                        i,
                        None if np.isnan(pool.scores[i]) else float(pool.scores[i]),
                        json.dumps({a: float(v[i]) for a, v in aspects.items() if not np.isnan(v[i])}) if aspects else None,
                        None if pool.oracle is None else float(pool.oracle[i]),
                    )
                    for i in range(len(pool.responses))
                ],
            )
            cur.executemany(
                "INSERT INTO meta VALUES (?,?)",
                [("schema_version", str(SCHEMA_VERSION)), ("config", config_json), ("pool_source", pool.source), ("created", "1")]
                + ([("features_file", json.dumps(pool.feature_scan.identity.to_json()))] if pool.feature_scan is not None else []),
            )

    # -- reading -----------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store whose creation never got as far as its tables
                return None
            raise
        return None if row is None else row[0]

    def set_config(self, config_json: str) -> None:
        """Replace the recorded config (a resume that raises the run's budget)."""
        with self.transaction() as cur:
            cur.execute("UPDATE meta SET value = ? WHERE key = 'config'", (config_json,))

    def set_stopped(self, reason: str | None, detail: str = "") -> None:
        """Record why the run stopped before its end (None: it is running or finished)."""
        with self.transaction() as cur:
            if reason is None:
                cur.execute("DELETE FROM meta WHERE key = 'stopped'")
            else:
                value = json.dumps({"reason": reason, "detail": detail})
                cur.execute("INSERT INTO meta (key, value) VALUES ('stopped', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (value,))

    def stopped(self) -> dict[str, str] | None:
        """{reason, detail} of a run that stopped before its end (budget, judge file), else None."""
        raw = self.meta("stopped")
        return None if raw is None else json.loads(raw)

    def features_file(self) -> FileIdentity | None:
        """The pool's .npy features file the run references instead of a copy (None: the run
        keeps its own ``features.npy`` or, live, a features table)."""
        raw = self.meta("features_file")
        return None if raw is None else FileIdentity.from_json(json.loads(raw))

    def feature_dim(self) -> int | None:
        """The length of the live features stored so far (None before the first)."""
        row = self.conn.execute("SELECT length(vector) FROM features LIMIT 1").fetchone()
        return None if row is None else int(row[0]) // 4

    def feature_source(self) -> NpyLayout | np.ndarray:
        """Where the run's [n_responses, d] features are read from, row by row: the referenced
        pool file (checked against the identity recorded at creation, once per store), the
        run's own ``features.npy``, or (live runs) the features table as an array."""
        identity = self.features_file()
        if identity is not None:
            if not self._features_checked:
                verify_identity(identity)
                self._features_checked = True
            return NpyLayout.read(identity.path)
        path = self.run_dir / "features.npy"
        if path.exists():
            return NpyLayout.read(path)
        return np.asarray(self.features(), dtype=np.float32)

    def features(self) -> np.ndarray:
        """[n_responses, d]: the pool's matrix (memory-mapped, float16 or float32) or, in a live
        run, the embedded features in response order. Whole-matrix readers only: a run reads
        rows through :meth:`feature_source`."""
        identity = self.features_file()
        if identity is not None:
            if self._features is None:
                self.feature_source()  # verify the file first
                self._features = np.load(identity.path, mmap_mode="r")
            return self._features
        path = self.run_dir / "features.npy"
        if path.exists():
            if self._features is None:
                self._features = np.load(path, mmap_mode="r")
            return self._features
        rows = self.conn.execute("SELECT response_idx, vector FROM features ORDER BY response_idx").fetchall()
        if not rows:
            return np.empty((0, 0), dtype=np.float32)
        if [r[0] for r in rows] != list(range(len(rows))):
            raise RunStateError(f"{self.run_dir}: features missing for some responses")
        return np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def prompt_features(self) -> np.ndarray | None:
        """[n_prompts, q] float32 prompt-only embeddings (rows = prompt idx) when the pool had
        a ``prompt_features`` column, else None."""
        path = self.run_dir / "prompt_features.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None

    def unembedded(self) -> list[int]:
        """Response idxs without features (live runs)."""
        return [r[0] for r in self.conn.execute(
            "SELECT idx FROM responses WHERE idx NOT IN (SELECT response_idx FROM features) ORDER BY idx")]

    def prompts(self) -> list[tuple[Prompt, str, int | None]]:
        """(prompt, split, position in annotation order) by prompt idx."""
        out = []
        rows = self.conn.execute("SELECT prompt_id, text, messages, split, position, meta FROM prompts ORDER BY idx")
        for pid, text, messages, split, position, meta in rows:
            prompt = Prompt(pid, text, tuple(json.loads(messages)) if messages else (), json.loads(meta) if meta else {})
            out.append((prompt, split, position))
        return out

    def responses(self) -> tuple[list[Response], np.ndarray]:
        """Responses by idx and their prompt idx [n]."""
        rows = self.conn.execute(
            "SELECT r.response_id, p.prompt_id, r.model, r.text, r.principle, r.system_prompt, r.prompt_idx "
            "FROM responses r JOIN prompts p ON p.idx = r.prompt_idx ORDER BY r.idx"
        ).fetchall()
        return [Response(*row[:6]) for row in rows], np.asarray([row[6] for row in rows], dtype=np.int64)

    def response_index(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """What a run needs of every response without its text: prompt idx [n] int64, model
        code [n] int32 and the model names the codes index (first-seen order)."""
        prompt_idx, codes, names, code_of = [], [], [], {}
        for p, m in self.conn.execute("SELECT prompt_idx, model FROM responses ORDER BY idx"):
            prompt_idx.append(p)
            code = code_of.get(m)
            if code is None:
                code = code_of[m] = len(names)
                names.append(m)
            codes.append(code)
        return np.asarray(prompt_idx, dtype=np.int64), np.asarray(codes, dtype=np.int32), names

    def response_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def response_at(self, idx: int) -> Response:
        """One response by idx, text included."""
        row = self.conn.execute(
            "SELECT r.response_id, p.prompt_id, r.model, r.text, r.principle, r.system_prompt "
            "FROM responses r JOIN prompts p ON p.idx = r.prompt_idx WHERE r.idx = ?", (int(idx),)
        ).fetchone()
        if row is None:
            raise IndexError(f"{self.run_dir}: no response {idx}")
        return Response(*row)

    def train_prompt_order(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT idx FROM prompts WHERE split = 'train' ORDER BY position")]

    def eval_prompts(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT idx FROM prompts WHERE split = 'eval' ORDER BY idx")]

    def pool_score(self, response_idx: int) -> tuple[float | None, dict[str, float]]:
        """The hidden stored score; only the replay judge may call this."""
        row = self.conn.execute("SELECT score, aspects FROM pool_scores WHERE response_idx = ?", (response_idx,)).fetchone()
        if row is None:
            return None, {}
        return row[0], json.loads(row[1]) if row[1] else {}

    def stored_scores(self) -> np.ndarray:
        """[n] the pool's stored judge scores (NaN where none), for evaluation only (the bench's
        judge quality); the loop sees a score only through the replay judge."""
        rows = self.conn.execute("SELECT score FROM pool_scores ORDER BY response_idx").fetchall()
        return np.asarray([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    def oracle(self) -> np.ndarray:
        """[n] hidden evaluation reward: oracle where the pool has one, else the stored score (NaN if none)."""
        rows = self.conn.execute("SELECT oracle, score FROM pool_scores ORDER BY response_idx").fetchall()
        has_oracle = any(r[0] is not None for r in rows)
        col = 0 if has_oracle else 1
        return np.asarray([np.nan if r[col] is None else r[col] for r in rows], dtype=np.float64)

    def iteration(self, it: int) -> IterationRecord | None:
        row = self.conn.execute(
            "SELECT iteration, status, prompt_idxs, proposal, metrics, pair_status FROM iterations WHERE iteration = ?", (it,)
        ).fetchone()
        if row is None:
            return None
        loaded = [json.loads(v) if v else None for v in row[3:]]
        return IterationRecord(row[0], row[1], json.loads(row[2]), *loaded)

    def iterations(self) -> list[IterationRecord]:
        rows = self.conn.execute("SELECT iteration FROM iterations ORDER BY iteration").fetchall()
        return [rec for (it,) in rows if (rec := self.iteration(it)) is not None]

    def scores(self, judge: str) -> dict[int, float]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT response_idx, value FROM scores WHERE judge = ?", (judge,))}

    def failures(self, judge: str) -> dict[int, str]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT response_idx, error FROM judge_failures WHERE judge = ?", (judge,))}

    def comparisons(self, judge: str) -> dict[tuple[int, int], ComparisonRecord]:
        """Stored pairwise judgements of ``judge``, keyed by (first_idx, second_idx) as asked."""
        rows = self.conn.execute(
            "SELECT first_idx, second_idx, p_first, consistent FROM comparisons WHERE judge = ?", (judge,)
        ).fetchall()
        return {(a, b): ComparisonRecord(a, b, p, None if c is None else bool(c)) for a, b, p, c in rows}

    def comparison_failures(self, judge: str) -> dict[tuple[int, int], str]:
        rows = self.conn.execute("SELECT first_idx, second_idx, error FROM comparison_failures WHERE judge = ?", (judge,))
        return {(a, b): e for a, b, e in rows}

    def position_consistency(self) -> tuple[int, int]:
        """(pairs asked in both orders, of which both answers agreed), over every judge."""
        n, agreed = self.conn.execute("SELECT COUNT(consistent), COALESCE(SUM(consistent), 0) FROM comparisons").fetchone()
        return int(n), int(agreed)

    def annotations(self) -> int:
        """Judge verdicts so far, failures included: responses scored plus pairs compared."""
        return sum(self.count(t) for t in ("scores", "judge_failures", "comparisons", "comparison_failures"))

    def judge_failure_count(self) -> int:
        """Responses a scoring judge and pairs a comparing judge failed on, after their retries."""
        return self.count("judge_failures") + self.count("comparison_failures")

    def count(self, table: str) -> int:
        assert table in {
            "scores", "judge_failures", "comparisons", "comparison_failures", "generation_failures", "preferences", "prompts", "responses",
        }
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def replay_pairs(self, iteration: int | None = None) -> np.ndarray:
        """[n, 2] (chosen_idx, rejected_idx) of the preferences (of one iteration, or all) in
        the order they entered the replay buffer.

        The ENN draws its training set and minibatches by position in the buffer, so this
        order is part of the run's state: the loop fills its buffer from this query both
        after committing an iteration's pairs and when it resumes, and a resumed process
        trains on exactly the buffer an uninterrupted one had."""
        sql = "SELECT chosen_idx, rejected_idx FROM preferences"
        args: tuple[int, ...] = ()
        if iteration is not None:
            sql, args = sql + " WHERE iteration = ?", (iteration,)
        rows = self.conn.execute(sql + " ORDER BY buffer_position", args).fetchall()
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def preference_rows(self) -> list[PreferenceRecord]:
        """Every preference, ordered by iteration, prompt and pair index (the export's order)."""
        rows = self.conn.execute(
            "SELECT iteration, prompt_idx, chosen_idx, rejected_idx, score_chosen, score_rejected, method, pair_index "
            "FROM preferences ORDER BY iteration, prompt_idx, pair_index"
        ).fetchall()
        return [PreferenceRecord(*r) for r in rows]

    # -- writing (each call is one transaction) ------------------------------------------
    def commit_generation(
        self,
        it: int,
        prompt_idxs: list[int],
        responses: list[GeneratedResponse],
        failures: list[GenerationFailure],
        stats: dict[str, Any] | None = None,
    ) -> None:
        """New candidates of one iteration and the requests that gave none. Identical
        responses (same content id) are stored once."""
        with self.transaction() as cur:
            start = cur.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM responses").fetchone()[0]
            for r, p_idx, meta in responses:
                cur.execute(
                    "INSERT OR IGNORE INTO responses (idx, response_id, prompt_idx, model, principle, system_prompt, text, meta) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (start, r.id, p_idx, r.model, r.principle, r.system_prompt, r.text, json.dumps(meta)),
                )
                start += cur.rowcount
            cur.executemany("INSERT INTO generation_failures VALUES (?,?,?,?)", [(it, p, m, e) for p, m, e in failures])
            cur.execute(
                "INSERT INTO iterations (iteration, status, prompt_idxs) VALUES (?,?,?)",
                (it, STATUS_GENERATED, json.dumps(prompt_idxs)),
            )
            self._insert_stats(cur, it, stats)

    def commit_embedding(self, it: int, vectors: dict[int, np.ndarray], stats: dict[str, Any] | None = None) -> None:
        """Features of the iteration's new responses, and (``stats``) what computing them cost."""
        with self.transaction() as cur:
            cur.executemany(
                "INSERT INTO features VALUES (?,?)",
                [(r, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for r, v in vectors.items()],
            )
            cur.execute("UPDATE iterations SET status = ? WHERE iteration = ? AND status = ?", (STATUS_EMBEDDED, it, STATUS_GENERATED))
            if cur.rowcount != 1:
                raise RunStateError(f"iteration {it} was not in state '{STATUS_GENERATED}'")
            self._insert_stats(cur, it, stats)

    @staticmethod
    def _insert_stats(cur: sqlite3.Cursor, it: int, stats: dict[str, Any] | None) -> None:
        for stage, s in (stats or {}).items():
            cur.execute(
                f"INSERT INTO call_stats (iteration, stage, {', '.join(STAT_COUNTERS)}) VALUES (?,?{',?' * len(STAT_COUNTERS)})",
                (it, stage, *(int(s.get(k, 0)) for k in STAT_COUNTERS)),
            )

    def _stat_columns(self) -> tuple[str, ...]:
        """The counters this store's call_stats has (a read-only older store lacks the hit tokens)."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(call_stats)")}
        return tuple(k for k in STAT_COUNTERS if k in have)

    def call_stats(self) -> dict[str, dict[str, int]]:
        """Totals per stage over the run: calls, cache_hits, failures, tokens (paid, and served
        from the cache: hit_*_tokens)."""
        cols = self._stat_columns()
        out: dict[str, dict[str, int]] = {}
        sums = ", ".join(f"SUM({c})" for c in cols)
        for row in self.conn.execute(f"SELECT stage, {sums} FROM call_stats GROUP BY stage ORDER BY stage"):
            out[row[0]] = {k: 0 for k in STAT_COUNTERS} | dict(zip(cols, map(int, row[1:])))
        return out

    def commit_model_choices(self, it: int, choices: dict[int, list[str]], vectors: dict[int, np.ndarray]) -> None:
        """Model-level acquisition: the models chosen to generate for each prompt of iteration
        ``it`` (and the prompt vectors embedded for the choice), in one transaction."""
        with self.transaction() as cur:
            cur.executemany("INSERT INTO model_choices VALUES (?,?,?)", [(it, p, json.dumps(m)) for p, m in choices.items()])
            cur.executemany(
                "INSERT OR IGNORE INTO prompt_vectors VALUES (?,?)",
                [(p, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for p, v in vectors.items()],
            )

    def model_choices(self, it: int | None = None) -> dict[int, list[str]]:
        """prompt -> chosen models, of one iteration (or of all: prompts are in one iteration each)."""
        try:
            if it is None:
                rows = self.conn.execute("SELECT prompt_idx, models FROM model_choices").fetchall()
            else:
                rows = self.conn.execute("SELECT prompt_idx, models FROM model_choices WHERE iteration = ?", (it,)).fetchall()
        except sqlite3.OperationalError:  # a read-only store of an older schema
            return {}
        return {int(p): json.loads(m) for p, m in rows}

    def prompt_vectors(self) -> dict[int, np.ndarray]:
        """Prompt-only embeddings a live model-level run stored, by prompt."""
        rows = self.conn.execute("SELECT prompt_idx, vector FROM prompt_vectors").fetchall()
        return {int(p): np.frombuffer(v, dtype=np.float32) for p, v in rows}

    def response_usage(self) -> list[tuple[int, str, int, int]]:
        """(prompt idx, model, prompt tokens, completion tokens; -1 where unknown) of every
        response whose generation usage is known (live calls, or a pool's token columns)."""
        out = []
        for p_idx, model, meta in self.conn.execute("SELECT prompt_idx, model, meta FROM responses WHERE meta IS NOT NULL"):
            m = json.loads(meta)
            out.append((int(p_idx), str(model), int(m.get("prompt_tokens", -1)), int(m.get("completion_tokens", -1))))
        return out

    def judged_items_by_iteration(self) -> dict[int, int]:
        """iteration -> responses sent to a scoring judge plus pairs sent to a comparing judge
        (answered or failed)."""
        out: dict[int, int] = {}
        for table in ("scores", "judge_failures", "comparisons", "comparison_failures"):
            for it, n in self.conn.execute(f"SELECT iteration, COUNT(*) FROM {table} GROUP BY iteration"):
                out[int(it)] = out.get(int(it), 0) + int(n)
        return out

    def call_stats_by_iteration(self, stage: str) -> dict[int, dict[str, int]]:
        """iteration -> the stage's counters in that iteration."""
        cols = self._stat_columns()
        sums = ", ".join(f"SUM({c})" for c in cols)
        rows = self.conn.execute(f"SELECT iteration, {sums} FROM call_stats WHERE stage = ? GROUP BY iteration", (stage,))
        return {int(r[0]): {k: 0 for k in STAT_COUNTERS} | dict(zip(cols, map(int, r[1:]))) for r in rows}

    def stage_totals(self, stage: str, up_to_iteration: int | None = None) -> tuple[int, int]:
        """(requests answered, by the server or the cache; prompt + completion tokens) of one
        stage over the run, or up to and including an iteration."""
        sql = (
            "SELECT COALESCE(SUM(calls + cache_hits), 0), COALESCE(SUM(prompt_tokens + completion_tokens), 0) "
            "FROM call_stats WHERE stage = ?"
        )
        args: tuple[Any, ...] = (stage,)
        if up_to_iteration is not None:
            sql, args = sql + " AND iteration <= ?", (stage, up_to_iteration)
        calls, tokens = self.conn.execute(sql, args).fetchone()
        return int(calls), int(tokens)

    def commit_selection(self, it: int, prompt_idxs: list[int], proposal: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO iterations (iteration, status, prompt_idxs, proposal) VALUES (?,?,?,?) "
                "ON CONFLICT(iteration) DO UPDATE SET status = excluded.status, proposal = excluded.proposal "
                "WHERE iterations.status = ?",
                (it, STATUS_SELECTED, json.dumps(prompt_idxs), json.dumps(proposal), STATUS_EMBEDDED),
            )
            if cur.rowcount != 1:
                raise RunStateError(f"iteration {it} was already selected")

    def commit_judgements(
        self,
        it: int,
        judge: str,
        scored: list[ScoreRecord],
        failed: list[JudgeFailure],
        stats: dict[str, Any] | None = None,
    ) -> None:
        """One batch of a scoring judge's results (details must be JSON-able)."""
        with self.transaction() as cur:
            self._insert_stats(cur, it, stats)
            cur.executemany(
                "INSERT INTO scores VALUES (?,?,?,?,?)",
                [(r, judge, v, json.dumps(d) if d else None, it) for r, v, d in scored],
            )
            cur.executemany(
                "INSERT OR REPLACE INTO judge_failures (response_idx, judge, iteration, error) VALUES (?,?,?,?)",
                [(r, judge, it, e) for r, e in failed],
            )

    def commit_comparisons(
        self, it: int, judge: str, compared: list[ComparisonRecord], failed: list[tuple[int, int, str]], stats: dict[str, Any] | None = None
    ) -> None:
        """compared: pairwise judgements; failed: (first_idx, second_idx, error)."""
        with self.transaction() as cur:
            self._insert_stats(cur, it, stats)
            cur.executemany(
                "INSERT INTO comparisons VALUES (?,?,?,?,?,?)",
                [(c.first_idx, c.second_idx, judge, c.p_first, None if c.consistent is None else int(c.consistent), it) for c in compared],
            )
            cur.executemany(
                "INSERT OR REPLACE INTO comparison_failures VALUES (?,?,?,?,?)", [(a, b, judge, it, e) for a, b, e in failed]
            )

    def commit_preferences(self, it: int, prefs: list[PreferenceRecord], pair_status: dict[str, int]) -> None:
        """Iteration ``it``'s preferences, in the order they enter the replay buffer (recorded
        as ``buffer_position``), and its pair-status counts; one transaction."""
        stray = [p for p in prefs if p.iteration != it]
        if stray:
            raise ValueError(f"commit_preferences({it}): a record of iteration {stray[0].iteration}")
        with self.transaction() as cur:
            start = cur.execute("SELECT COALESCE(MAX(buffer_position) + 1, 0) FROM preferences").fetchone()[0]
            cur.executemany(
                "INSERT INTO preferences (iteration, prompt_idx, chosen_idx, rejected_idx, score_chosen, score_rejected, method, "
                "pair_index, buffer_position) VALUES (?,?,?,?,?,?,?,?,?)",
                [(*p, start + k) for k, p in enumerate(prefs)],
            )
            cur.execute(
                "UPDATE iterations SET status = ?, pair_status = ? WHERE iteration = ? AND status = ?",
                (STATUS_ANNOTATED, json.dumps(pair_status), it, STATUS_SELECTED),
            )
            if cur.rowcount != 1:
                raise RunStateError(f"iteration {it} was not in state '{STATUS_SELECTED}'")

    def commit_training(self, it: int, metrics: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute(
                "UPDATE iterations SET status = ?, metrics = ? WHERE iteration = ? AND status = ?",
                (STATUS_TRAINED, json.dumps(metrics), it, STATUS_ANNOTATED),
            )
            if cur.rowcount != 1:
                raise RunStateError(f"iteration {it} was not in state '{STATUS_ANNOTATED}'")

    def reopen_training(self, it: int) -> None:
        """Undo iteration ``it``'s training record (its checkpoint is unreadable): it is
        'annotated' again, so the loop trains it again from the checkpoint before it."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE iterations SET status = ?, metrics = NULL WHERE iteration = ? AND status = ?",
                (STATUS_ANNOTATED, it, STATUS_TRAINED),
            )
            if cur.rowcount != 1:
                raise RunStateError(f"iteration {it} was not in state '{STATUS_TRAINED}'")

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_path(self, it: int) -> Path:
        return self.run_dir / "checkpoints" / f"enn_{it:05d}.safetensors"

    def prune_checkpoints(self, keep_from: int) -> None:
        """Delete checkpoints of iterations before ``keep_from`` (never the ones still needed)."""
        for path in (self.run_dir / "checkpoints").glob("enn_*.safetensors"):
            if int(path.stem.split("_")[1]) < keep_from:
                path.unlink(missing_ok=True)
