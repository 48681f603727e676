"""Run state of one APL run (one acquisition, one seed) in ``<run dir>/apl.sqlite``.

Each round moves through the stages ``sampled`` (S prompts drawn, completions generated and
their log-probs scored) -> ``selected`` (the M pairs to label) -> ``labelled`` (judge
outcomes) -> ``trained`` (policy checkpoint written) -> ``evaluated`` (win rate vs theta0).
Every stage commits in one transaction, so a crash resumes at the first stage not committed;
the judge's and the generator's calls go through the shared request cache, so a resumed
stage repeats no paid call. The run directory is locked (flock) while a process works on it.

Tables:
    meta      key/value: schema_version, config (JSON), acquisition, seed, uid
    rounds    round, stage
    samples   round, prompt_id, sample, text, finish_reason, logp (policy, templated completion as DPO sees it),
              gen_logp (policy, generated tokens only: the entropy's term), ref_logp (theta0; first two samples only)
    picks     round, rank, prompt_id, entropy, certainty, score  (the M selected, best first)
    labels    round, prompt_id, chosen, rejected (sample indices), outcome ok|tie|failure, detail
    evals     round, prompt_id, text (policy completion), outcome (1 win, 0 loss, 0.5 tie, NULL failure), detail
    training  round, metrics (JSON: TRL's last log entries)
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from activepref.core.store import LockedSqliteDir, connect_sqlite, lock_run_dir
from activepref.errors import RunStateError

SCHEMA_VERSION = 2
STAGES = ("new", "sampled", "selected", "labelled", "trained", "evaluated")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, stage TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    round INTEGER, prompt_id TEXT, sample INTEGER, text TEXT NOT NULL, finish_reason TEXT,
    logp REAL NOT NULL, gen_logp REAL NOT NULL, ref_logp REAL, PRIMARY KEY (round, prompt_id, sample));
CREATE TABLE IF NOT EXISTS picks (
    round INTEGER, rank INTEGER, prompt_id TEXT NOT NULL, entropy REAL, certainty REAL, score REAL,
    PRIMARY KEY (round, rank));
CREATE TABLE IF NOT EXISTS labels (
    round INTEGER, prompt_id TEXT, chosen INTEGER, rejected INTEGER, outcome TEXT NOT NULL, detail TEXT,
    PRIMARY KEY (round, prompt_id));
CREATE TABLE IF NOT EXISTS evals (
    round INTEGER, prompt_id TEXT, text TEXT NOT NULL, outcome REAL, detail TEXT,
    PRIMARY KEY (round, prompt_id));
CREATE TABLE IF NOT EXISTS training (round INTEGER PRIMARY KEY, metrics TEXT NOT NULL);
"""


class SampleRow(NamedTuple):
    """One completion of the policy in a round; ref_logp only for the pair (samples 0 and 1)."""

    prompt_id: str
    sample: int
    text: str
    finish_reason: str | None
    logp: float
    gen_logp: float
    ref_logp: float | None


class PickRow(NamedTuple):
    """A prompt the acquisition sent to the judge, best first; entropy needs N > 2 samples."""

    prompt_id: str
    entropy: float | None
    certainty: float | None
    score: float | None


class LabelRow(NamedTuple):
    """The judge's verdict on a picked prompt's pair (chosen/rejected: sample 0 or 1, None
    for a tie or failure)."""

    prompt_id: str
    chosen: int | None
    rejected: int | None
    outcome: str
    detail: str | None


class EvalRow(NamedTuple):
    """One held-out prompt of the win-rate evaluation: 1 win, 0 loss, 0.5 tie, None failure."""

    prompt_id: str
    text: str
    outcome: float | None
    detail: str | None


class APLStore(LockedSqliteDir):
    @classmethod
    def open_or_create(cls, run_dir: str | Path, config_json: str, acquisition: str, seed: int) -> APLStore:
        """Open the run (checking it was made with the same config, acquisition and seed) or
        create it."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run_dir)
        store = cls(run_dir, connect_sqlite(run_dir / "apl.sqlite"), lock)
        try:
            with store.transaction() as cur:
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                wanted = {"schema_version": str(SCHEMA_VERSION), "config": config_json, "acquisition": acquisition, "seed": str(seed)}
                have = dict(cur.execute("SELECT key, value FROM meta").fetchall())
                if not have:
                    cur.executemany("INSERT INTO meta VALUES (?, ?)", [*wanted.items(), ("uid", uuid.uuid4().hex)])
                else:
                    for key, value in wanted.items():
                        if have.get(key) != value:
                            raise RunStateError(
                                f"{run_dir} holds an APL run made with a different {key}: delete that run folder to "
                                "start it again (the request cache beside it keeps every paid call), or use another --out"
                            )
        except BaseException:
            store.close()
            raise
        return store

    @property
    def uid(self) -> str:
        """Random id of this run (part of the request-cache key of its policies' generations)."""
        return str(self.conn.execute("SELECT value FROM meta WHERE key = 'uid'").fetchone()[0])

    # -- stages --------------------------------------------------------------------------
    def stage(self, round_: int) -> str:
        row = self.conn.execute("SELECT stage FROM rounds WHERE round = ?", (round_,)).fetchone()
        return "new" if row is None else row[0]

    def done(self, round_: int, stage: str) -> bool:
        """Whether ``round_`` has passed ``stage``."""
        return STAGES.index(self.stage(round_)) >= STAGES.index(stage)

    @staticmethod
    def _advance(cur: sqlite3.Cursor, round_: int, stage: str) -> None:
        cur.execute("INSERT INTO rounds VALUES (?, ?) ON CONFLICT(round) DO UPDATE SET stage = excluded.stage", (round_, stage))

    # -- writing (one transaction per stage) ---------------------------------------------
    def commit_samples(self, round_: int, rows: Sequence[SampleRow]) -> None:
        with self.transaction() as cur:
            cur.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(round_, *r) for r in rows])
            self._advance(cur, round_, "sampled")

    def commit_picks(self, round_: int, rows: Sequence[PickRow]) -> None:
        with self.transaction() as cur:
            cur.executemany("INSERT INTO picks VALUES (?, ?, ?, ?, ?, ?)", [(round_, rank, *r) for rank, r in enumerate(rows)])
            self._advance(cur, round_, "selected")

    def commit_labels(self, round_: int, rows: Sequence[LabelRow]) -> None:
        with self.transaction() as cur:
            cur.executemany("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?)", [(round_, *r) for r in rows])
            self._advance(cur, round_, "labelled")

    def commit_training(self, round_: int, metrics: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO training VALUES (?, ?)", (round_, json.dumps(metrics, sort_keys=True)))
            self._advance(cur, round_, "trained")

    def commit_evals(self, round_: int, rows: Sequence[EvalRow]) -> None:
        with self.transaction() as cur:
            cur.executemany("INSERT INTO evals VALUES (?, ?, ?, ?, ?)", [(round_, *r) for r in rows])
            self._advance(cur, round_, "evaluated")

    # -- reading -------------------------------------------------------------------------
    def samples(self, round_: int) -> dict[str, list[dict[str, Any]]]:
        """prompt_id -> samples in order, each {text, finish_reason, logp, gen_logp, ref_logp}."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pid, _, text, finish, logp, gen, ref in self.conn.execute(
            "SELECT prompt_id, sample, text, finish_reason, logp, gen_logp, ref_logp FROM samples WHERE round = ? ORDER BY rowid",
            (round_,),
        ):
            out.setdefault(pid, []).append({"text": text, "finish_reason": finish, "logp": logp, "gen_logp": gen, "ref_logp": ref})
        return out

    def picks(self, round_: int) -> list[dict[str, Any]]:
        cols = ("prompt_id", "entropy", "certainty", "score")
        rows = self.conn.execute(
            "SELECT prompt_id, entropy, certainty, score FROM picks WHERE round = ? ORDER BY rank", (round_,)
        ).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def labels(self, up_to_round: int | None = None) -> list[dict[str, Any]]:
        cols = ("round", "prompt_id", "chosen", "rejected", "outcome", "detail")
        sql = "SELECT round, prompt_id, chosen, rejected, outcome, detail FROM labels"
        args: tuple = ()
        if up_to_round is not None:
            sql += " WHERE round <= ?"
            args = (up_to_round,)
        return [dict(zip(cols, r)) for r in self.conn.execute(sql + " ORDER BY round, rowid", args)]

    def labelled_prompt_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT prompt_id FROM picks")}

    def evals(self, round_: int) -> list[dict[str, Any]]:
        cols = ("prompt_id", "text", "outcome", "detail")
        rows = self.conn.execute("SELECT prompt_id, text, outcome, detail FROM evals WHERE round = ? ORDER BY rowid", (round_,))
        return [dict(zip(cols, r)) for r in rows]

    def training(self, round_: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT metrics FROM training WHERE round = ?", (round_,)).fetchone()
        return None if row is None else json.loads(row[0])
