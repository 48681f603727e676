"""One SQLite write transaction: ``BEGIN IMMEDIATE`` (the write lock taken up front, so two
writers never deadlock upgrading a read), ``COMMIT`` on success, ``ROLLBACK`` on any exception,
Ctrl-C included. The run store and the annotation queue both write through it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    else:
        cur.execute("COMMIT")
