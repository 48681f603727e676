"""The ``openai`` embedder kind against the local OpenAI-compatible test server: vectors in
input order, batching, retries of every fault kind, a clear error when retries run out, no
key anywhere, and the request cache that makes a resume or a re-run pay nothing twice."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.backends.base import BackendError
from activepref.backends.openai_compat import _Failure
from activepref.core.cache import CachedEmbedder, RequestCache, conversation_key
from activepref.live.embedders import EMBEDDERS, conversation_text, make_embedder
from activepref.live.openai_embedder import OpenAIEmbedder, parse_embeddings, split_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers.fake_openai import Action, FakeOpenAIServer, Rule, embedding_vector  # noqa: E402


def conv(i: int, reply: str | None = "an answer") -> list[dict[str, str]]:
    c = [{"role": "user", "content": f"prompt {i}: say something about {i}"}]
    return c + ([{"role": "assistant", "content": f"{reply} {i}"}] if reply is not None else [])


def expected(conversations, dim: int = 32) -> np.ndarray:
    return np.asarray([embedding_vector(conversation_text(c), dim) for c in conversations], dtype=np.float32)


def embedder(srv: FakeOpenAIServer, **options) -> OpenAIEmbedder:
    options = {"base_url": srv.base_url, "max_retries": 2, "timeout_s": 5.0, **options}
    return OpenAIEmbedder("embed-m", **options)


def test_vectors_come_back_in_input_order_a_batch_per_request():
    convs = [conv(i) for i in range(11)] + [conv(99, reply=None)]
    with FakeOpenAIServer() as srv:
        emb = embedder(srv, batch_size=5, max_concurrency=3)
        got = emb.embed(convs)
        bodies = [r.body for r in srv.embedding_requests]
    np.testing.assert_allclose(got, expected(convs), rtol=0, atol=1e-6)
    assert got.dtype == np.float32 and emb.dim == 32
    assert sorted(len(b["input"]) for b in bodies) == [2, 5, 5]  # concurrent: any arrival order
    assert sorted(t for b in bodies for t in b["input"]) == sorted(conversation_text(c) for c in convs)
    assert all(b["model"] == "embed-m" and b["encoding_format"] == "float" and "dimensions" not in b for b in bodies)
    assert emb.prompt_tokens > 0
    assert emb.embed([]).shape == (0, 32)


def test_dimensions_is_sent_and_known_without_a_call_else_one_probe():
    with FakeOpenAIServer() as srv:
        short = embedder(srv, dimensions=8)
        assert short.dim == 8 and not srv.embedding_requests
        assert short.embed([conv(1)]).shape == (1, 8)
        assert srv.embedding_requests[-1].body["dimensions"] == 8
        probed = embedder(srv)
        assert probed.dim == 32 and len(srv.embedding_requests) == 2
        assert short.name != probed.name  # a shortened vector is another feature: another cache key


@pytest.mark.parametrize("action", [
    Action.error(500), Action.error(502), Action.rate_limited("0"), Action.unavailable(), Action.hang(30),
    Action.malformed(), Action.html(), Action.wrong_shape(), Action.empty(), Action.truncated(),
], ids=lambda a: f"{a.kind}{a.status}")
def test_every_fault_kind_is_retried_and_the_answer_is_right(action):
    convs = [conv(i) for i in range(4)]
    with FakeOpenAIServer(rules=[Rule("prompt 2", action, times=1)]) as srv:
        emb = embedder(srv, batch_size=2, timeout_s=1.0)
        got = emb.embed(convs)
        actions = [r.action for r in srv.embedding_requests]
    np.testing.assert_allclose(got, expected(convs), atol=1e-6)
    assert len(actions) == 3 and actions.count("reply") == 2


def test_a_request_that_keeps_failing_is_one_clear_error_without_the_key(monkeypatch):
    key = "sk-canary-EMBED-1234567890abcdef"
    monkeypatch.setenv("EMBED_KEY", key)
    with FakeOpenAIServer(rules=[Rule("prompt 1", Action.echo_auth(500))]) as srv:
        emb = embedder(srv, api_key_env="EMBED_KEY", max_retries=1)
        with pytest.raises(BackendError) as info:
            emb.embed([conv(0), conv(1)])
        sent = {r.headers.get("authorization") for r in srv.embedding_requests}
    message = str(info.value)
    assert sent == {f"Bearer {key}"}
    assert "embedding failed" in message and "HTTP 500" in message and "2 attempts" in message
    assert key not in message and key[-12:] not in message and "\n" not in message
    assert key not in repr(emb)


def test_a_bad_request_is_not_retried():
    with FakeOpenAIServer(rules=[Rule("prompt", Action.bad_request("dimensions is not supported"))]) as srv:
        with pytest.raises(BackendError, match="HTTP 400: dimensions is not supported"):
            embedder(srv, dimensions=8).embed([conv(0)])
        assert len(srv.embedding_requests) == 1


def test_parse_embeddings_orders_by_index_and_refuses_what_is_not_n_finite_vectors():
    ok = parse_embeddings({"data": [{"index": 1, "embedding": [3, 4]}, {"index": 0, "embedding": [1, 2]}],
                           "usage": {"prompt_tokens": 7}}, 2)
    np.testing.assert_array_equal(ok.vectors, [[1, 2], [3, 4]])
    assert ok.vectors.dtype == np.float32 and ok.prompt_tokens == 7
    unindexed = parse_embeddings({"data": [{"embedding": [1.0]}, {"embedding": [2.0]}]}, 2)
    np.testing.assert_array_equal(unindexed.vectors, [[1.0], [2.0]])
    bad = {
        "not an object": [1, 2],
        "no data": {"object": "list"},
        "empty data": {"data": []},
        "one too few": {"data": [{"index": 0, "embedding": [1.0]}]},
        "repeated index": {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]},
        "index out of range": {"data": [{"index": 0, "embedding": [1.0]}, {"index": 2, "embedding": [2.0]}]},
        "bool index": {"data": [{"index": False, "embedding": [1.0]}, {"index": True, "embedding": [2.0]}]},
        "mixed lengths": {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0, 3.0]}]},
        "empty vectors": {"data": [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}]},
        "a string": {"data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [2.0]}]},
        "a nested list": {"data": [{"index": 0, "embedding": [[1.0]]}, {"index": 1, "embedding": [[2.0]]}]},
        "NaN": {"data": [{"index": 0, "embedding": [math.nan]}, {"index": 1, "embedding": [2.0]}]},
        "inf": {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [-math.inf]}]},
        "no embedding": {"data": [{"index": 0}, {"index": 1, "embedding": [2.0]}]},
    }
    for case, data in bad.items():
        with pytest.raises(_Failure) as info:
            parse_embeddings(data, 2)
        assert info.value.retryable and info.value.reason.startswith("malformed response"), case


def test_the_request_cache_answers_a_second_time_and_a_second_process(tmp_path):
    convs = [conv(i) for i in range(10)]
    with FakeOpenAIServer() as srv:
        cache = RequestCache(tmp_path / "cache.sqlite")
        emb = CachedEmbedder(embedder(srv, batch_size=3, max_concurrency=2), cache)
        assert emb.wave == 6
        first = emb.embed(convs + convs[:2])  # a repeat within one call is asked once
        assert len(srv.embedding_requests) == 4  # 10 distinct: a wave of 6 (2 requests), one of 4 (2)
        np.testing.assert_array_equal(first, np.concatenate([expected(convs), expected(convs[:2])]))
        np.testing.assert_array_equal(emb.embed(list(reversed(convs))), expected(list(reversed(convs))))
        assert len(srv.embedding_requests) == 4
        stats = cache.stats.stage("embedding")
        assert stats.calls == 10 and stats.cache_hits == 10  # vectors: the second call's are hits (a repeat within a call is neither)
        sent_tokens = sum(len(t.split()) for r in srv.embedding_requests for t in r.body["input"])  # the fake server's usage
        assert stats.prompt_tokens == sent_tokens
        four = sum(cache.vector_tokens([conversation_key(emb.name, c) for c in convs[:4]]).values())
        assert four > 0
        assert emb.usage(convs[:4] + convs[:1]) == {"calls": 4, "prompt_tokens": four, "cache_hits": 0, "hit_prompt_tokens": 0}
        # reported once: a later step sees them as the cache's
        assert emb.usage(convs[:4]) == {"calls": 0, "prompt_tokens": 0, "cache_hits": 4, "hit_prompt_tokens": four}
        cache.close()
        again = CachedEmbedder(embedder(srv, batch_size=3), RequestCache(tmp_path / "cache.sqlite"))
        np.testing.assert_array_equal(again.embed(convs[3:]), expected(convs[3:]))
        assert len(srv.embedding_requests) == 4
        other = CachedEmbedder(embedder(srv, dimensions=8), RequestCache(tmp_path / "cache.sqlite"))
        assert other.embed(convs[:1]).shape == (1, 8) and len(srv.embedding_requests) == 5  # another embedder: its own keys


def test_a_failed_request_keeps_every_answer_that_came_back(tmp_path):
    """What a kill or a dead request mid-embedding relies on: each answer is stored as it
    arrives, the other requests of its wave included, and only what failed is asked again."""
    convs = [conv(i) for i in range(8)]
    with FakeOpenAIServer(rules=[Rule("prompt 5", Action.error(503), times=1)]) as srv:
        cache = RequestCache(tmp_path / "cache.sqlite")
        emb = CachedEmbedder(embedder(srv, batch_size=2, max_concurrency=2, max_retries=0), cache)
        assert emb.wave == 4
        with pytest.raises(BackendError, match="HTTP 503"):
            emb.embed(convs)  # wave 1 (prompts 0-3) answered; in wave 2, [4, 5] fails and [6, 7] answers
        stored = cache.get_vectors([conversation_key(emb.name, c) for c in convs])
        assert len(stored) == 6 and conversation_key(emb.name, convs[5]) not in stored
        sent = len(srv.embedding_requests)
        np.testing.assert_array_equal(emb.embed(convs), expected(convs))
        assert [r.body["input"] for r in srv.embedding_requests[sent:]] == [[conversation_text(c) for c in convs[4:6]]]
        assert emb.usage(convs)["calls"] == 8  # every vector this process paid for, once


def test_vectors_of_another_length_are_refused_never_mixed(tmp_path):
    convs = [conv(i) for i in range(4)]
    with FakeOpenAIServer() as srv:
        cache = RequestCache(tmp_path / "cache.sqlite")
        emb = CachedEmbedder(embedder(srv, batch_size=2, max_retries=1), cache)
        emb.embed(convs[:2])
        srv.embedding_dim = 16  # another model behind the same URL
        with pytest.raises(BackendError, match="16-dimensional vectors, 32 expected"):  # retried, then refused
            emb.embed(convs[2:])
        assert len(cache.get_vectors([conversation_key(emb.name, c) for c in convs])) == 2  # nothing of it stored
        fresh = CachedEmbedder(embedder(srv, batch_size=2), cache)  # a new life: it learns 16 from the server
        with pytest.raises(BackendError, match=r"holds vectors of \[16, 32\] dimensions"):
            fresh.embed(convs)


def test_nothing_is_asked_for_no_conversation_and_max_chars_keeps_the_end(tmp_path):
    with FakeOpenAIServer() as srv:
        emb = CachedEmbedder(embedder(srv), RequestCache(tmp_path / "cache.sqlite"))
        assert emb.embed([]).shape[0] == 0 and not srv.embedding_requests  # no probe for the width
        short = embedder(srv, max_chars=12)
        long = conv(7, reply="a rather long answer that goes on")
        np.testing.assert_allclose(short.embed([long]), [embedding_vector(conversation_text(long)[-12:], 32)], atol=1e-6)
        assert srv.embedding_requests[-1].body["input"] == [conversation_text(long)[-12:]]
        assert short.name != embedder(srv).name  # cut texts are other features: other cache keys


def test_an_input_the_model_refuses_says_how_to_cut_it():
    with FakeOpenAIServer(rules=[Rule("prompt", Action.bad_request("input is too long: 9000 tokens > 8192"))]) as srv:
        with pytest.raises(BackendError, match="too long.*set embedding.max_chars"):
            embedder(srv).embed([conv(0)])


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 10_000), lengths=st.lists(st.integers(0, 5_000), min_size=1, max_size=40))
def test_split_tokens_adds_up_and_is_proportional_within_one(total, lengths):
    shares = split_tokens(total, lengths)
    weights = [max(1, n) for n in lengths]
    assert sum(shares) == total and all(s >= 0 for s in shares)
    for share, w in zip(shares, weights, strict=True):
        assert abs(share - total * w / sum(weights)) < 1.0 + 1e-9


def test_split_tokens_by_hand():
    assert split_tokens(10, [1, 1]) == [5, 5]
    assert split_tokens(7, [1, 1]) == [4, 3]  # the remainder to the first of equal ones
    assert split_tokens(10, [3, 1]) == [8, 2]  # 7.5 and 2.5: floors 7 and 2, the tie to the first
    assert split_tokens(0, [5, 9]) == [0, 0] and split_tokens(3, [0, 0, 0]) == [1, 1, 1]


def test_registered_as_paid_and_builtin_is_not_a_path():
    entry = EMBEDDERS.get("openai")
    assert entry.paid and not EMBEDDERS.get("sentence_transformers").paid
    emb = make_embedder("openai", "builtin", base_url="http://127.0.0.1:9/v1")
    assert emb.client.model == "builtin"


def live_config(root: Path, srv: FakeOpenAIServer, *, samples: int, embedding: str, extra: str = "") -> Path:
    """A 2-iteration live run of 6 prompts on ``srv`` (generation, ``openai`` embedding with the
    ``embedding`` options, judge); returns its config file."""
    from test_live_server import GEN_MODELS, JUDGE_MODEL, write_prompts

    prompts = write_prompts(root / "prompts.jsonl", [f"Question {i}: why is {i} interesting?" for i in range(6)])
    models = "".join(f"    - {{name: {m}, backend: openai, base_url: '{srv.base_url}', model: {m}}}\n" for m in GEN_MODELS)
    cfg = root / "run.yaml"
    cfg.write_text(
        f"prompts: {prompts}\nmethod: drts\nbatch_size: 3\niterations: 2\nseed: 2\n"
        f"generation:\n  samples_per_model: {samples}\n  max_tokens: 24\n  models:\n{models}"
        f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, {embedding}}}\n"
        f"judge: {{kind: likert, model: {{backend: openai, base_url: '{srv.base_url}', model: {JUDGE_MODEL}}}}}\n"
        f"cache_path: '{root / 'cache.sqlite'}'\nenn: {{heads: 4, hidden: 8, steps: 10}}\n" + extra)
    return cfg


def test_a_live_run_embeds_through_the_server_and_a_rerun_asks_nothing(tmp_path):
    from test_live_server import GEN_MODELS, LiveScript
    from typer.testing import CliRunner

    from activepref.cli import app

    runner = CliRunner()
    with FakeOpenAIServer(LiveScript()) as srv:
        cfg = live_config(tmp_path, srv, samples=2, embedding="batch_size: 4, dimensions: 16",
                          extra="prices: {embed-m: {input_per_mtok: 20000.0}}\n")
        result = runner.invoke(app, ["run", "-c", str(cfg), "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
        embedded = srv.embedding_requests
        texts = [t for r in embedded for t in r.body["input"]]
        assert len(texts) == len(set(texts)) == 6 * len(GEN_MODELS) * 2  # every response once, nothing twice
        assert all(r.body["dimensions"] == 16 and len(r.body["input"]) <= 4 for r in embedded)
        words = sum(len(t.split()) for t in texts)  # the fake server's usage: whitespace words
        bills = []
        for run in ("run",):
            st_json = json.loads(runner.invoke(app, ["status", str(tmp_path / run), "--json"]).stdout)
            bills.append(st_json["cost"])
            assert st_json["summary"]["stages"]["embedding"]["calls"] == len(texts)
        assert bills[0]["embedding_calls"] == len(texts) and bills[0]["embedding_input_tokens"] == words
        assert bills[0]["usd_embedding"] == pytest.approx(words * 20000.0 / 1e6) and "embed-m" not in bills[0]["unpriced"]
        estimate = json.loads(runner.invoke(app, ["estimate", "-c", str(cfg)]).stdout.strip().splitlines()[-1])
        assert estimate["embedding_calls"] == len(texts)  # the estimate's vectors are the run's
        before = len(srv.requests)
        result = runner.invoke(app, ["run", "-c", str(cfg), "--out", str(tmp_path / "again")])
        assert result.exit_code == 0, result.output
        assert len(srv.requests) == before  # generation, embedding and judge all answered by the cache
        again = json.loads(runner.invoke(app, ["status", str(tmp_path / "again"), "--json"]).stdout)
        assert again["summary"]["stages"]["embedding"]["cache_hits"] == len(texts)
        assert again["summary"]["stages"]["embedding"]["calls"] == 0
        assert again["cost"]["usd_embedding"] == pytest.approx(bills[0]["usd_embedding"])  # the same bill, from the cache
        exports = []
        for run in ("run", "again"):
            dest = tmp_path / f"{run}.jsonl"
            assert runner.invoke(app, ["export", str(tmp_path / run), "--format", "jsonl", "-o", str(dest)]).exit_code == 0
            exports.append(dest.read_bytes())
        assert exports[0] == exports[1] and json.loads(exports[0].splitlines()[0])["chosen"]


def test_estimate_prices_the_embedding_of_every_response(tmp_path):
    """`estimate` counts a vector per response and its input tokens (prompt and response), priced
    by the embedding model; the same config with a local embedder has no embedding cost."""
    from test_live_server import write_prompts
    from typer.testing import CliRunner

    from activepref.cli import app

    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {i}: why is {i} interesting?" for i in range(6)])
    base = (f"prompts: {prompts}\nmethod: drts\nbatch_size: 3\niterations: 2\nseed: 2\n"
            "generation:\n  samples_per_model: 2\n  max_tokens: 24\n  models:\n"
            "    - {name: g, backend: openai, base_url: 'http://127.0.0.1:9/v1', model: g}\n"
            "judge: {kind: likert, model: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: j}}\n"
            "prices: {embed-m: {input_per_mtok: 1000000.0}}\n")
    outputs = {}
    for kind, line in (("openai", "embedding: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: embed-m}\n"),
                       ("local", "embedding: {backend: sentence_transformers, model: builtin}\n")):
        cfg = tmp_path / f"{kind}.yaml"
        cfg.write_text(base + line)
        result = CliRunner().invoke(app, ["estimate", "-c", str(cfg)])
        assert result.exit_code == 0, result.output
        outputs[kind] = json.loads(result.stdout.strip().splitlines()[-1])
    remote, local = outputs["openai"], outputs["local"]
    assert remote["embedding_calls"] == remote["generation_calls"] == 6 * 2 and local["embedding_calls"] == 0
    assert remote["usd_embedding"] > 24 * 12  # a dollar a token: at least the 24-token responses' worth
    assert remote["usd"] == pytest.approx(remote["usd_generation"] + remote["usd_judge"] + remote["usd_embedding"])
    assert local["usd_embedding"] == 0 and remote["input_tokens"] > local["input_tokens"]


def test_a_resume_whose_server_changed_model_is_refused_then_resumes_when_it_is_back(tmp_path):
    """The features of one run come from one model: a life whose server now answers with vectors
    of another length stops with one line (and stores no such feature); once the model is back,
    `resume` finishes the run."""
    import os
    import subprocess

    from test_live_server import LiveScript

    cli = [sys.executable, "-m", "activepref"]
    with FakeOpenAIServer(LiveScript()) as srv:
        cfg = live_config(tmp_path, srv, samples=1, embedding="max_retries: 1")
        run = tmp_path / "run"
        killed = subprocess.run([*cli, "run", "-c", str(cfg), "--out", str(run)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "ACTIVEPREF_CRASH_AT": "generate.before_commit@1"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        srv.embedding_dim = 16
        refused = subprocess.run([*cli, "resume", str(run)], capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr[-2000:]
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "16-dimensional vectors, 32 expected" in errors[0], refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
        srv.embedding_dim = 32
        done = subprocess.run([*cli, "resume", str(run)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        status = json.loads(subprocess.run([*cli, "status", str(run), "--json"], capture_output=True, text=True).stdout)
        assert status["iterations_done"] == 2


def test_a_cache_id_keeps_the_vectors_valid_when_the_server_moves(tmp_path):
    convs = [conv(i) for i in range(3)]
    cache = RequestCache(tmp_path / "cache.sqlite")
    with FakeOpenAIServer() as first:
        CachedEmbedder(embedder(first, cache_id="minilm-v1"), cache).embed(convs)
        CachedEmbedder(embedder(first), cache).embed(convs[:1])  # without one: keyed by the URL
    with FakeOpenAIServer() as moved:  # another port
        np.testing.assert_array_equal(CachedEmbedder(embedder(moved, cache_id="minilm-v1"), cache).embed(convs), expected(convs))
        assert not moved.embedding_requests
        CachedEmbedder(embedder(moved), cache).embed(convs[:1])
        assert len(moved.embedding_requests) == 1  # keyed by the old URL: asked again

