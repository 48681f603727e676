"""Human annotation tasks, annotators and labels, kept in the run's own ``run.sqlite``.

The loop (a human or routed judge) adds an iteration's pairs as *tasks* and reads their
outcomes; the web app (:mod:`activepref.annotate.app`) serves tasks to annotators and writes
their *labels*. Both go through this module, each write one ``BEGIN IMMEDIATE`` transaction on
its own connection, so the app never takes the run's lock and the two processes can share one
run directory: SQLite's write lock (WAL) serialises them.

What the transactions guarantee:

- an annotator labels a pair at most once (primary key (task, annotator)); a repeated submit
  is answered ``duplicate`` and writes nothing;
- a pair never gets more labels than it needs: the count is checked and the label written in
  one transaction, so two annotators racing for the last slot get ``saved`` and ``closed``;
- a served task is *claimed* for ``lease_s`` seconds, so concurrent annotators are handed
  different pairs while there are enough of them; once none is left, a pair claimed by
  someone who has sat on it for ``STEAL_AFTER_S`` is shown to the next annotator too (a
  closed browser tab no longer holds up a waiting run for the whole lease).

Tables: ``annotators`` (name, SHA-256 of the token: the token itself is never stored),
``annotation_tasks`` (one per pair; state open / complete / failed), ``annotation_labels``
(choice in the stored pair's terms, whether the annotator saw it swapped, note),
``annotation_claims``, ``annotation_routes`` (a routed judge's human-or-model decision per
pair) and ``annotation_meta`` (the app's secret: CSRF tokens and display orders derive from it).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activepref.annotate.agreement import cohens_kappa, krippendorff_alpha, majority_verdict
from activepref.core.transactions import immediate_transaction
from activepref.errors import ConfigError, RunStateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotation_tasks (
    task_id INTEGER PRIMARY KEY AUTOINCREMENT, iteration INTEGER NOT NULL, first_idx INTEGER NOT NULL,
    second_idx INTEGER NOT NULL, labels_needed INTEGER NOT NULL, max_skips INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'open', created REAL NOT NULL, UNIQUE (first_idx, second_idx));
CREATE INDEX IF NOT EXISTS annotation_tasks_open ON annotation_tasks (state, task_id);
CREATE TABLE IF NOT EXISTS annotation_labels (
    task_id INTEGER NOT NULL REFERENCES annotation_tasks (task_id), annotator TEXT NOT NULL REFERENCES annotators (name),
    choice TEXT NOT NULL CHECK (choice IN ('first', 'second', 'tie', 'skip')), swapped INTEGER NOT NULL,
    note TEXT, created REAL NOT NULL, PRIMARY KEY (task_id, annotator));
CREATE TABLE IF NOT EXISTS annotation_claims (
    task_id INTEGER NOT NULL, annotator TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (task_id, annotator));
CREATE TABLE IF NOT EXISTS annotation_routes (
    first_idx INTEGER NOT NULL, second_idx INTEGER NOT NULL, iteration INTEGER NOT NULL, human INTEGER NOT NULL,
    uncertainty REAL, PRIMARY KEY (first_idx, second_idx));
CREATE TABLE IF NOT EXISTS annotation_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

CHOICES = ("first", "second", "tie", "skip")
SHOWN_CHOICES = ("a", "b", "tie", "skip")  # what the page's buttons send: A and B as shown
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
DEFAULT_LEASE_S = 300.0  # how long a served pair stays reserved for the annotator it was shown to
STEAL_AFTER_S = 90.0  # a claim this old may be shared with an annotator who has nothing else left
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for SQLite's write lock (the loop's commits are short)
NOTE_MAX_CHARS = 4000
OUTCOME_CHUNK = 400  # pairs per outcomes() query (two bound values each, well under SQLite's limit)
_WRITERS = threading.Lock()  # one writer at a time per process (see AnnotationQueue._transaction)


@dataclass(frozen=True)
class TaskOutcome:
    """Where one pair stands. votes: the non-skip choices ('first'/'second'/'tie', stored
    pair's terms), with their annotators; verdict: the majority once complete."""

    task_id: int
    first_idx: int
    second_idx: int
    state: str  # open | complete | failed
    votes: list[str]
    annotators: list[str]
    skips: int
    labels_needed: int

    @property
    def verdict(self) -> str:
        return majority_verdict(self.votes)


@dataclass(frozen=True)
class TaskView:
    """What the app shows of a task: the conversation and the two responses in the annotator's
    order (``swapped``: the stored second response is shown as A).

    Most pairs answer one prompt: ``conversation`` is it and ``conversation_b`` is None. A
    cross-prompt pair (a batch design may compare responses to different prompts) has a
    conversation per side: ``conversation`` is the one A answers, ``conversation_b`` the one B
    answers, so each response is judged against its own prompt."""

    task_id: int
    iteration: int
    conversation: list[dict[str, str]]
    shown_a: str
    shown_b: str
    swapped: bool
    conversation_b: list[dict[str, str]] | None = None

    @property
    def cross_prompt(self) -> bool:
        return self.conversation_b is not None


@dataclass(frozen=True)
class SubmitResult:
    """saved: written; duplicate: this annotator already labelled the pair (nothing written);
    closed: the pair had all its labels (or failed) before this one (nothing written)."""

    status: str
    state: str = "open"


@dataclass
class QueueSummary:
    tasks: dict[str, int] = field(default_factory=dict)  # open / complete / failed
    labels: int = 0
    skips: int = 0
    annotators: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {labels, skips}
    agreement: dict[str, Any] = field(default_factory=dict)  # kappa (two annotators), alpha, items


def _conversation(text: str, messages: str | None) -> list[dict[str, str]]:
    """A stored prompt as the messages shown (a bare prompt is one user turn)."""
    return [dict(m) for m in json.loads(messages)] if messages else [{"role": "user", "content": text}]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def connect(run_dir: str | Path) -> sqlite3.Connection:
    """A connection to a run's store for the annotation app: no run lock, autocommit
    (transactions explicit), fsync on commit, and a long busy wait for the loop's commits."""
    path = Path(run_dir) / "run.sqlite"
    if not path.exists():
        raise RunStateError(f"{run_dir} is not an activepref run directory (no run.sqlite)")
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class AnnotationQueue:
    """The annotation tables of one run, over one SQLite connection (use one per thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._secret: bytes | None = None

    @staticmethod
    def present(conn: sqlite3.Connection) -> bool:
        """Whether the store has the annotation tables (an older store read without upgrading has not)."""
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'annotation_tasks'").fetchone() is not None

    @classmethod
    def open(cls, run_dir: str | Path) -> AnnotationQueue:
        """The queue of an existing run, for a process that does not own the run (the app)."""
        from activepref.core.store import SCHEMA_VERSION

        conn = connect(run_dir)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            conn.close()
            found = row[0] if row else "none"
            raise RunStateError(
                f"{run_dir}: run store schema {found}, the annotation app needs {SCHEMA_VERSION}; "
                f"`activepref resume {run_dir}` (or `activepref status`) once with this version upgrades it"
            )
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        # Writers of one process queue on a lock instead of on SQLite's busy handler, whose
        # sleeps (up to 100 ms each) would make the tail latency of concurrent submits.
        with _WRITERS, immediate_transaction(self.conn) as cur:
            yield cur

    # -- the app's secret ----------------------------------------------------------------
    def secret(self) -> bytes:
        """The run's random annotation secret (made on first use, kept in the store so that a
        restarted app accepts the forms and shows the orders of the one before)."""
        if self._secret is None:
            with self._transaction() as cur:
                cur.execute("INSERT OR IGNORE INTO annotation_meta (key, value) VALUES ('secret', ?)", (secrets.token_hex(32),))
                value = cur.execute("SELECT value FROM annotation_meta WHERE key = 'secret'").fetchone()[0]
            self._secret = bytes.fromhex(value)
        return self._secret

    def csrf_token(self, annotator: str) -> str:
        """The annotator's form token: an HMAC of their name under the run's secret."""
        return hmac.new(self.secret(), b"csrf\0" + annotator.encode("utf-8"), hashlib.sha256).hexdigest()

    def check_csrf(self, annotator: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.csrf_token(annotator), given)

    def swapped(self, annotator: str, task_id: int) -> bool:
        """Whether ``annotator`` sees the pair's second response as A: a fixed coin per
        (annotator, pair), so a reload or a restarted app shows the same order."""
        mac = hmac.new(self.secret(), f"order\0{annotator}\0{task_id}".encode(), hashlib.sha256).digest()
        return bool(mac[0] & 1)

    # -- annotators ----------------------------------------------------------------------
    def add_annotator(self, name: str) -> str:
        """Register ``name`` (or give them a new token) and return the token; only its
        SHA-256 is kept, so a lost link is replaced, not recovered."""
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"annotator name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        token = secrets.token_urlsafe(24)
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO annotators (name, token_sha256, created) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                (name, token_digest(token), time.time()),
            )
        return token

    def annotator_for(self, token: str | None) -> str | None:
        """The annotator whose token this is, or None. Every stored digest is compared with
        ``hmac.compare_digest`` (no early exit), so timing says nothing about a near miss."""
        if not token:
            return None
        given = token_digest(token)
        found = None
        for name, digest in self.conn.execute("SELECT name, token_sha256 FROM annotators").fetchall():
            if hmac.compare_digest(given, digest):
                found = name
        return found

    def annotators(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM annotators ORDER BY name")]

    # -- the loop's side -----------------------------------------------------------------
    def add_tasks(self, iteration: int, pairs: Sequence[tuple[int, int]], labels_needed: int, max_skips: int) -> int:
        """Make a task of every pair that has none (one transaction); returns how many were new."""
        with self._transaction() as cur:
            return self._insert_tasks(cur, iteration, pairs, labels_needed, max_skips)

    @staticmethod
    def _insert_tasks(cur: sqlite3.Cursor, iteration: int, pairs: Sequence[tuple[int, int]], labels_needed: int, max_skips: int) -> int:
        before = cur.execute("SELECT COUNT(*) FROM annotation_tasks").fetchone()[0]
        now = time.time()
        cur.executemany(
            "INSERT OR IGNORE INTO annotation_tasks (iteration, first_idx, second_idx, labels_needed, max_skips, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(iteration, int(a), int(b), labels_needed, max_skips, now) for a, b in pairs],
        )
        return int(cur.execute("SELECT COUNT(*) FROM annotation_tasks").fetchone()[0] - before)

    def routes(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bool]:
        """The recorded route (True: humans) of each pair that has one."""
        out: dict[tuple[int, int], bool] = {}
        for a, b in pairs:
            row = self.conn.execute(
                "SELECT human FROM annotation_routes WHERE first_idx = ? AND second_idx = ?", (int(a), int(b))
            ).fetchone()
            if row is not None:
                out[(a, b)] = bool(row[0])
        return out

    def commit_routes(
        self, iteration: int, routes: dict[tuple[int, int], tuple[bool, float | None]], labels_needed: int, max_skips: int
    ) -> None:
        """Record each pair's route (human?, its uncertainty) and make the human pairs' tasks,
        in one transaction: after a crash a pair is either routed with its task or not at all."""
        with self._transaction() as cur:
            cur.executemany(
                "INSERT OR IGNORE INTO annotation_routes (first_idx, second_idx, iteration, human, uncertainty) VALUES (?, ?, ?, ?, ?)",
                [(int(a), int(b), iteration, int(h), u) for (a, b), (h, u) in routes.items()],
            )
            self._insert_tasks(cur, iteration, [p for p, (h, _) in routes.items() if h], labels_needed, max_skips)

    def outcomes(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], TaskOutcome]:
        """The state and votes of each pair's task (pairs without a task are left out): one
        query per OUTCOME_CHUNK pairs (tasks joined with their labels), not two per pair."""
        wanted = {(int(a), int(b)): (a, b) for a, b in pairs}
        keys = list(wanted)
        found: dict[tuple[int, int], TaskOutcome] = {}
        for start in range(0, len(keys), OUTCOME_CHUNK):
            chunk = keys[start : start + OUTCOME_CHUNK]
            # a join on the wanted pairs, so the (first_idx, second_idx) index finds each task
            # (a row-value IN scanned the whole table once per chunk)
            found.update(self._outcomes(
                f"WITH w(a, b) AS (VALUES {', '.join('(?, ?)' for _ in chunk)}) ",
                "JOIN w ON t.first_idx = w.a AND t.second_idx = w.b", [v for k in chunk for v in k],
            ))
        return {wanted[k]: o for k, o in found.items()}

    def human_pairs(self) -> dict[frozenset[int], TaskOutcome]:
        """Every task's outcome keyed by its unordered pair (the export's `judged_by`), in one query."""
        return {frozenset((o.first_idx, o.second_idx)): o for o in self._outcomes("", "", []).values()}

    def _outcomes(self, with_: str, join: str, args: Sequence[int]) -> dict[tuple[int, int], TaskOutcome]:
        """(first, second) -> outcome of the tasks that ``join`` keeps (``t``: annotation_tasks;
        ``with_``: a WITH clause it may use)."""
        rows = self.conn.execute(
            f"{with_}SELECT t.task_id, t.first_idx, t.second_idx, t.state, t.labels_needed, l.annotator, l.choice "
            f"FROM annotation_tasks t {join} LEFT JOIN annotation_labels l ON l.task_id = t.task_id "
            "ORDER BY t.task_id, l.created, l.annotator",
            list(args),
        ).fetchall()
        out: dict[tuple[int, int], TaskOutcome] = {}
        for task_id, group in itertools.groupby(rows, key=lambda r: r[0]):
            labels = list(group)
            _, first, second, state, needed = labels[0][:5]
            labels = [(who, c) for *_, who, c in labels if who is not None]  # LEFT JOIN: a task without labels has one empty row
            votes = [(who, c) for who, c in labels if c != "skip"]
            out[(int(first), int(second))] = TaskOutcome(
                int(task_id), int(first), int(second), state, [c for _, c in votes], [w for w, _ in votes],
                sum(c == "skip" for _, c in labels), needed,
            )
        return out

    # -- the app's side ------------------------------------------------------------------
    def next_task(self, annotator: str, lease_s: float = DEFAULT_LEASE_S) -> int | None:
        """The task to show ``annotator`` (claimed for ``lease_s``): their own unexpired claim
        if it is still open, else the oldest open task they have not labelled whose free
        slots are not all claimed by others, else (nothing free) an open task whose other
        claims are all at least ``STEAL_AFTER_S`` old, the oldest claim first. None when there
        is nothing for them."""
        now = time.time()
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT c.task_id FROM annotation_claims c JOIN annotation_tasks t ON t.task_id = c.task_id "
                "WHERE c.annotator = ? AND c.expires > ? AND t.state = 'open' AND NOT EXISTS "
                "(SELECT 1 FROM annotation_labels l WHERE l.task_id = c.task_id AND l.annotator = c.annotator) "
                "ORDER BY c.task_id LIMIT 1",
                (annotator, now),
            ).fetchone()
            if row is None:
                row = cur.execute(
                    "SELECT t.task_id FROM annotation_tasks t WHERE t.state = 'open' "
                    "AND NOT EXISTS (SELECT 1 FROM annotation_labels l WHERE l.task_id = t.task_id AND l.annotator = :me) "
                    "AND (SELECT COUNT(*) FROM annotation_labels l WHERE l.task_id = t.task_id AND l.choice != 'skip') "
                    "  + (SELECT COUNT(*) FROM annotation_claims c WHERE c.task_id = t.task_id AND c.annotator != :me "
                    "     AND c.expires > :now) < t.labels_needed "
                    "ORDER BY t.task_id LIMIT 1",
                    {"me": annotator, "now": now},
                ).fetchone()
            if row is None:  # nothing free: a pair someone claimed but has sat on for STEAL_AFTER_S (a closed tab
                row = cur.execute(  # holds it for the whole lease, and a waiting run with it); the first submit fills it
                    "SELECT t.task_id FROM annotation_tasks t JOIN annotation_claims c ON c.task_id = t.task_id "
                    "WHERE t.state = 'open' AND c.annotator != :me AND c.expires > :now "
                    "AND NOT EXISTS (SELECT 1 FROM annotation_labels l WHERE l.task_id = t.task_id AND l.annotator = :me) "
                    "AND (SELECT COUNT(*) FROM annotation_labels l WHERE l.task_id = t.task_id AND l.choice != 'skip') "
                    "  < t.labels_needed "
                    "GROUP BY t.task_id HAVING MAX(c.expires) <= :stale ORDER BY MIN(c.expires), t.task_id LIMIT 1",
                    {"me": annotator, "now": now, "stale": now + lease_s - STEAL_AFTER_S},
                ).fetchone()
            if row is None:
                return None
            cur.execute(
                "INSERT INTO annotation_claims (task_id, annotator, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (task_id, annotator) DO UPDATE SET expires = excluded.expires",
                (row[0], annotator, now + lease_s),
            )
            return int(row[0])

    def view(self, task_id: int, annotator: str) -> TaskView | None:
        row = self.conn.execute(
            "SELECT t.iteration, f.text, s.text, f.prompt_idx, s.prompt_idx, p.text, p.messages, q.text, q.messages "
            "FROM annotation_tasks t "
            "JOIN responses f ON f.idx = t.first_idx JOIN responses s ON s.idx = t.second_idx "
            "JOIN prompts p ON p.idx = f.prompt_idx JOIN prompts q ON q.idx = s.prompt_idx WHERE t.task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        iteration, first, second, first_prompt, second_prompt = row[:5]
        of_first, of_second = _conversation(row[5], row[6]), _conversation(row[7], row[8])
        swapped = self.swapped(annotator, task_id)
        shown_a, shown_b = (second, first) if swapped else (first, second)
        if first_prompt == second_prompt:
            return TaskView(task_id, iteration, of_first, shown_a, shown_b, swapped)
        conv_a, conv_b = (of_second, of_first) if swapped else (of_first, of_second)
        return TaskView(task_id, iteration, conv_a, shown_a, shown_b, swapped, conversation_b=conv_b)

    def submit(self, task_id: int, annotator: str, shown_choice: str, note: str = "") -> SubmitResult:
        """Record ``annotator``'s choice as shown to them (a, b, tie or skip); one transaction.
        Raises ValueError for an unknown choice and LookupError for an unknown task."""
        if shown_choice not in SHOWN_CHOICES:
            raise ValueError(f"choice {shown_choice!r}: expected one of {', '.join(SHOWN_CHOICES)}")
        swapped = self.swapped(annotator, task_id)
        choice = {"a": "second" if swapped else "first", "b": "first" if swapped else "second"}.get(shown_choice, shown_choice)
        with self._transaction() as cur:
            task = cur.execute("SELECT state, labels_needed, max_skips FROM annotation_tasks WHERE task_id = ?", (task_id,)).fetchone()
            if task is None:
                raise LookupError(f"no annotation task {task_id}")
            state, needed, max_skips = task
            if cur.execute("SELECT 1 FROM annotation_labels WHERE task_id = ? AND annotator = ?", (task_id, annotator)).fetchone():
                return SubmitResult("duplicate", state)
            if state != "open":
                cur.execute("DELETE FROM annotation_claims WHERE task_id = ? AND annotator = ?", (task_id, annotator))
                return SubmitResult("closed", state)
            cur.execute(
                "INSERT INTO annotation_labels (task_id, annotator, choice, swapped, note, created) VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, annotator, choice, int(swapped), note.strip()[:NOTE_MAX_CHARS] or None, time.time()),
            )
            cur.execute("DELETE FROM annotation_claims WHERE task_id = ? AND annotator = ?", (task_id, annotator))
            votes, skips = cur.execute(
                "SELECT COALESCE(SUM(choice != 'skip'), 0), COALESCE(SUM(choice = 'skip'), 0) FROM annotation_labels WHERE task_id = ?",
                (task_id,),
            ).fetchone()
            state = "complete" if votes >= needed else "failed" if skips >= max_skips else "open"
            if state != "open":
                cur.execute("UPDATE annotation_tasks SET state = ? WHERE task_id = ?", (state, task_id))
                cur.execute("DELETE FROM annotation_claims WHERE task_id = ?", (task_id,))
            return SubmitResult("saved", state)

    def progress(self, annotator: str) -> dict[str, int]:
        """One annotator's counts (labelled, skipped) and the queue's (open, complete, failed)."""
        mine = dict(self.conn.execute(
            "SELECT choice = 'skip', COUNT(*) FROM annotation_labels WHERE annotator = ? GROUP BY choice = 'skip'", (annotator,)
        ).fetchall())
        states = dict(self.conn.execute("SELECT state, COUNT(*) FROM annotation_tasks GROUP BY state").fetchall())
        return {
            "labelled": int(mine.get(0, 0)), "skipped": int(mine.get(1, 0)),
            "open": int(states.get("open", 0)), "complete": int(states.get("complete", 0)), "failed": int(states.get("failed", 0)),
        }

    # -- reporting -----------------------------------------------------------------------
    def summary(self) -> QueueSummary:
        """Tasks by state, labels and skips per annotator, and agreement over the pairs with
        two or more labels: Cohen's κ when exactly two annotators share pairs, Krippendorff's
        α (nominal) over every such pair."""
        out = QueueSummary()
        out.tasks = {s: 0 for s in ("open", "complete", "failed")}
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM annotation_tasks GROUP BY state"):
            out.tasks[state] = int(n)
        for name in self.annotators():
            out.annotators[name] = {"labels": 0, "skips": 0}
        by_task: dict[int, dict[str, str]] = {}
        for task_id, who, choice in self.conn.execute("SELECT task_id, annotator, choice FROM annotation_labels ORDER BY task_id"):
            entry = out.annotators.setdefault(who, {"labels": 0, "skips": 0})
            if choice == "skip":
                entry["skips"] += 1
                out.skips += 1
            else:
                entry["labels"] += 1
                out.labels += 1
                by_task.setdefault(task_id, {})[who] = choice
        shared = [votes for votes in by_task.values() if len(votes) >= 2]
        raters = sorted({who for votes in shared for who in votes})
        kappa = None
        if len(raters) == 2:
            both = [votes for votes in shared if len(votes) == 2]
            kappa = cohens_kappa([v[raters[0]] for v in both], [v[raters[1]] for v in both])
        out.agreement = {
            "items": len(shared),
            "annotators": len(raters),
            "kappa": kappa,
            "alpha": krippendorff_alpha([list(v.values()) for v in shared]),
        }
        return out
