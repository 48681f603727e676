"""A fault storm (issue 18, part 2): a live run against a server that answers a fifth of all
requests (first attempts and retries alike, seeded; the kinds in turn) with a fault: 500 / 502 / 503, 429 with
and without Retry-After, a hang past the timeout, a body cut mid-way, broken JSON, a proxy's
HTML page, valid JSON of the wrong shape, an empty choice list, and judge answers with no digit
or only an out-of-range one; embedding requests (the ``openai`` embedder on the same server) get
the same storm. The run must finish; every failure that outlived its retries is
recorded with its cause; and nothing garbage is scored: each score equals what the same
response gets from a server without faults, and each stored feature vector is the one it gets there."""

from __future__ import annotations

import collections
import hashlib
import json
import sqlite3
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers.fake_openai import Action, FakeOpenAIServer  # noqa: E402
from test_live_server import LiveScript, write_prompts  # noqa: E402

from activepref.cli import app  # noqa: E402

RATE = 0.2
SEED = 18
FAULTS = {
    "error500": lambda: Action.error(500),
    "error502": lambda: Action.error(502, "Bad gateway"),
    "error503": lambda: Action.unavailable(),
    "429 with Retry-After": lambda: Action.rate_limited("1"),
    "429 without Retry-After": lambda: Action.rate_limited(None),
    "hang": lambda: Action.hang(4.0),
    "truncated": lambda: Action.truncated(),
    "malformed": lambda: Action.malformed(),
    "html": lambda: Action.html(502),
    "wrong_shape": lambda: Action.wrong_shape(),
    "empty": lambda: Action.empty(),
}
JUDGE_FAULTS = {"no digit": lambda: Action.no_digit(), "out-of-range digit": lambda: Action.out_of_range_digit()}
EMBEDDING_FAULTS = {"short vectors": lambda: Action.short_vectors()}
EMBEDDING_RATE = 0.2  # a run makes few embedding requests: a higher rate, so that several kinds occur


class Storm:
    """Wraps the live script: a seeded fifth of requests (by body and attempt) get a fault."""

    def __init__(self, inner: LiveScript | None, rate: float = RATE) -> None:
        self.inner = inner or LiveScript()
        self.rate = rate
        self.attempts: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self.turns: collections.Counter[bool | str] = collections.Counter()
        self.embedding_injected: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def _hit(self, body: dict, rate: float | None = None, attempts: int | None = None) -> bool:
        """Whether this attempt at ``body`` gets a fault (seeded by body and attempt number;
        with ``attempts``, only the first ``attempts`` attempts can)."""
        key = json.dumps(body, sort_keys=True)
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
        if attempts is not None and attempt >= attempts:
            return False
        draw = hashlib.sha256(f"{SEED}|{key}|{attempt}".encode()).digest()
        return int.from_bytes(draw[:4], "big") / 2**32 < (self.rate if rate is None else rate)

    def embedding(self, body: dict) -> Action | None:
        """The same storm on /v1/embeddings (the chat faults that have a meaning there, and a
        plausible answer with vectors of the wrong length)."""
        if not self._hit(body, EMBEDDING_RATE, attempts=2):
            return None
        menu = {**EMBEDDING_FAULTS, **FAULTS}
        with self.lock:  # the wrong-length answer first: it is the one only this endpoint has
            name = [*EMBEDDING_FAULTS, *sorted(FAULTS)][self.turns["embedding"] % len(menu)]
            self.turns["embedding"] += 1
            self.embedding_injected[name] += 1
        return menu[name]()

    def __call__(self, n: int, body: dict) -> Action | None:
        if self._hit(body):
            judge = body.get("model") == "judge-m"
            menu = {**FAULTS, **(JUDGE_FAULTS if judge else {})}
            with self.lock:  # the kinds in turn (judge and generation each their own turn), so every kind occurs
                name = sorted(menu)[self.turns[judge] % len(menu)]
                self.turns[judge] += 1
                self.injected[name] += 1
            return menu[name]()
        return self.inner(n, body)


def config(root: Path, srv: FakeOpenAIServer, prompts: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    common = "max_retries: 1, timeout_s: 1.5, max_concurrency: 8"
    path.write_text(
        f"prompts: {prompts}\nmethod: dts\nbatch_size: 6\niterations: 4\nseed: 5\n"
        "generation:\n  samples_per_model: 2\n  max_tokens: 32\n  models:\n"
        f"    - {{name: gen-a, backend: openai, base_url: '{srv.base_url}', model: gen-a, {common}}}\n"
        f"    - {{name: gen-b, backend: openai, base_url: '{srv.base_url}', model: gen-b, {common}}}\n"
        # a vector is not a per-response failure to record: an embedding request that outlives its retries
        # stops the run (`resume` asks again), so the storm hits only the first two attempts of each
        f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, batch_size: 4, max_retries: 3, "
        "timeout_s: 1.5, max_concurrency: 4, dimensions: 32}\n"
        f"judge: {{kind: likert, max_retries: 1, model: {{backend: openai, base_url: '{srv.base_url}', model: judge-m, {common}}}}}\n"
        f"cache_path: '{root / (name + '-cache.sqlite')}'\n"
        "enn: {heads: 4, hidden: 16, steps: 30}\n",
        encoding="utf-8",
    )
    return path


def by_response(run_dir: Path, table: str, column: str) -> dict[str, object]:
    """response_id -> ``column`` of ``table`` (keyed by ``response_idx``) in a run's store."""
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        sql = f"SELECT r.response_id, t.{column} FROM {table} t JOIN responses r ON r.idx = t.response_idx"
        return dict(conn.execute(sql).fetchall())
    finally:
        conn.close()


def scores(run_dir: Path) -> dict[str, float]:
    return by_response(run_dir, "scores", "value")  # type: ignore[return-value]


def test_a_fault_storm_is_survived_recorded_and_never_scored(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {i}: describe thing {i} briefly." for i in range(30)])
    runner = CliRunner()
    with FakeOpenAIServer(LiveScript()) as calm:
        result = runner.invoke(app, ["run", "-c", str(config(tmp_path, calm, prompts, "calm")), "--out", str(tmp_path / "calm")])
        assert result.exit_code == 0, result.output[-3000:]
    storm = Storm(LiveScript())
    with FakeOpenAIServer(storm, embedding_script=storm.embedding) as srv:
        result = runner.invoke(app, ["run", "-c", str(config(tmp_path, srv, prompts, "storm")), "--out", str(tmp_path / "storm")])
        assert result.exit_code == 0, result.output[-3000:]
        requests = len(srv.chat_requests)
        embedding_requests = len(srv.embedding_requests)
    injected = sum(storm.injected.values())
    print(f"{requests} chat requests, {injected} faults injected: {dict(storm.injected)}; {embedding_requests} embedding "
          f"requests, {sum(storm.embedding_injected.values())} faults: {dict(storm.embedding_injected)}")
    assert set(storm.injected) == set(FAULTS) | set(JUDGE_FAULTS), storm.injected  # every kind happened
    assert 0.12 < injected / requests < 0.28
    assert len(storm.embedding_injected) >= 3 and "short vectors" in storm.embedding_injected, storm.embedding_injected

    # nothing garbage embedded: every stored vector is the calm run's for the same response
    calm_features, storm_features = features(tmp_path / "calm"), features(tmp_path / "storm")
    assert storm_features and all(len(v) == 32 * 4 for v in storm_features.values())
    shared_features = set(calm_features) & set(storm_features)
    assert len(shared_features) >= len(storm_features) // 2
    assert all(calm_features[r] == storm_features[r] for r in shared_features)

    # nothing garbage scored: every score is a Likert value and equals the calm run's for the same response
    calm_scores, storm_scores = scores(tmp_path / "calm"), scores(tmp_path / "storm")
    assert storm_scores and all(1.0 <= v <= 5.0 for v in storm_scores.values())
    shared = set(calm_scores) & set(storm_scores)
    assert len(shared) >= len(storm_scores) // 2
    assert all(abs(calm_scores[r] - storm_scores[r]) < 1e-9 for r in shared)

    # what outlived its retries is recorded with its cause
    conn = sqlite3.connect(tmp_path / "storm" / "run.sqlite")
    try:
        failures = [e for (e,) in conn.execute("SELECT error FROM judge_failures")]
        failures += [e for (e,) in conn.execute("SELECT error FROM generation_failures")]
        st = json.loads(runner.invoke(app, ["status", str(tmp_path / "storm"), "--json"]).stdout)
    finally:
        conn.close()
    assert failures, "with one retry some faults must outlive it: the recording path went untested"
    causes = ("HTTP ", "malformed", "timed out", "timeout", "digit", "connection")
    assert all(any(c in e for c in causes) for e in failures), failures
    assert st["iterations_done"] == 4 and st["failures"] == len(conn_failures(tmp_path / "storm"))
    print(f"{len(failures)} failure(s) recorded after retries:")
    for e in failures:
        print("   ", e[:160])


def features(run_dir: Path) -> dict[str, bytes]:
    return by_response(run_dir, "features", "vector")  # type: ignore[return-value]


def conn_failures(run_dir: Path) -> list[str]:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return [e for (e,) in conn.execute("SELECT error FROM judge_failures")]
    finally:
        conn.close()
