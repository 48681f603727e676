"""The ``openai`` backend against a local fake OpenAI-compatible server (tests/servers)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import pickle
import threading
import time

import openai
import pytest
from servers.fake_openai import LIKERT_LOGPROBS, Action, FakeOpenAIServer, Rule

from activepref.backends import make_backend
from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams
from activepref.backends.openai_compat import OpenAICompatBackend, parse_retry_after, scrub
from activepref.config import ModelConfig

KEY_ENV = "ACTIVEPREF_TEST_OPENAI_KEY"
SECRET = "tk-live-4f9a1c2e7b8d0356aa"  # not sk-shaped: only exact scrubbing can hide it


def backend(srv: FakeOpenAIServer, **kw) -> OpenAICompatBackend:
    opts = dict(timeout_s=0.3, max_retries=2, backoff_s=0.01, backoff_max_s=0.05, max_concurrency=4)
    opts.update(kw)
    return OpenAICompatBackend("fake-model", srv.base_url, **opts)


def req(text: str, **params) -> ChatRequest:
    return ChatRequest.from_messages([{"role": "user", "content": text}], SamplingParams(**params))


def run(b: OpenAICompatBackend, requests: list[ChatRequest]) -> dict[int, list]:
    """Results by index; each value lists every callback for that index."""
    got: dict[int, list] = {}
    lock = threading.Lock()

    def on_result(i: int, r: ChatResult | BackendError) -> None:
        with lock:
            got.setdefault(i, []).append(r)

    b.complete(requests, on_result)
    return got


def only(got: dict[int, list], i: int = 0):
    assert len(got[i]) == 1
    return got[i][0]


# ------------------------------------------------------------------ success and mapping
def test_success_maps_text_usage_logprobs_and_cached_tokens():
    system = {"role": "system", "content": "You are a strict judge of answers to questions."}
    with FakeOpenAIServer(answers={"capital": "Paris is the capital of France."}) as srv:
        b = backend(srv)
        first = ChatRequest.from_messages([system, {"role": "user", "content": "the capital of France?"}],
                                          SamplingParams(max_tokens=64))
        r = only(run(b, [first]))
        assert isinstance(r, ChatResult)
        assert r.text == "Paris is the capital of France."
        assert r.finish_reason == "stop"
        assert r.completion_tokens == 6
        assert r.prompt_tokens == (4 + 9) + (4 + 4)
        assert r.cached_prompt_tokens == 0
        assert r.first_token_logprobs == {}

        judge = ChatRequest.from_messages([system, {"role": "user", "content": "Rate it 1-5."}],
                                          SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=20))
        r = only(run(b, [judge]))
        assert r.cached_prompt_tokens == 4 + 9  # the system message was seen before
        assert r.text == "The" and r.completion_tokens == 1
        assert r.first_token_logprobs == dict(LIKERT_LOGPROBS[:20])
        assert all(d in r.first_token_logprobs for d in "12345")

        cut = only(run(b, [req("the capital, in two words", max_tokens=2)]))
        assert cut.text == "Paris is" and cut.finish_reason == "length"


def test_sampling_params_and_seed_reach_the_server():
    with FakeOpenAIServer() as srv:
        b = backend(srv)
        run(b, [req("a", temperature=0.7, top_p=0.9, max_tokens=33, seed=1234, top_logprobs=5),
                req("b", temperature=0.0, max_tokens=1)])
        bodies = {r.body["messages"][0]["content"]: r.body for r in srv.chat_requests}
        a, c = bodies["a"], bodies["b"]
        assert a["model"] == "fake-model"
        assert (a["temperature"], a["top_p"], a["max_tokens"], a["seed"]) == (0.7, 0.9, 33, 1234)
        assert a["logprobs"] is True and a["top_logprobs"] == 5
        assert c["temperature"] == 0.0 and c["max_tokens"] == 1
        assert "seed" not in c and "logprobs" not in c and "top_logprobs" not in c
        assert not a.get("stream")


def test_no_digit_answer_is_a_result_not_an_error():
    with FakeOpenAIServer(script={0: Action.no_digit()}) as srv:
        r = only(run(backend(srv), [req("Rate it.", max_tokens=8, top_logprobs=5)]))
        assert isinstance(r, ChatResult)
        assert not any(ch.isdigit() for ch in r.text)
        assert r.first_token_logprobs and not any(t.isdigit() for t in r.first_token_logprobs)
        assert len(srv.chat_requests) == 1


def test_registry_builds_the_backend_from_model_config():
    with FakeOpenAIServer() as srv:
        cfg = ModelConfig(backend="openai", model="fake-model", base_url=srv.base_url + "/", max_concurrency=3,
                          timeout_s=5, max_retries=1)
        b = make_backend(cfg)
        assert isinstance(b, OpenAICompatBackend)
        assert b.endpoint == f"{srv.base_url}|fake-model"
        assert (b.max_concurrency, b.timeout_s, b.max_retries) == (3, 5.0, 1)
        assert isinstance(only(run(b, [req("hi")])), ChatResult)


def test_endpoint_hides_url_credentials():
    b = OpenAICompatBackend("m", "http://user:pw@127.0.0.1:9/v1")
    assert b.endpoint == "http://127.0.0.1:9/v1|m"


# ------------------------------------------------------------------ retries
def test_retries_5xx_then_succeeds():
    with FakeOpenAIServer(script={0: Action.error(500), 1: Action.unavailable()}) as srv:
        r = only(run(backend(srv), [req("x")]))
        assert isinstance(r, ChatResult)
        assert [c.action for c in srv.chat_requests] == ["error500", "error503", "reply"]


def test_retry_after_seconds_is_honoured():
    with FakeOpenAIServer(script={0: Action.rate_limited(retry_after="1")}) as srv:
        r = only(run(backend(srv, backoff_s=0.01), [req("x")]))
        assert isinstance(r, ChatResult)
        first, second = srv.chat_requests
        assert second.received_at - first.received_at >= 1.0


def test_retry_after_is_capped():
    with FakeOpenAIServer(script={0: Action.unavailable(retry_after="3600")}) as srv:
        t0 = time.monotonic()
        r = only(run(backend(srv, retry_after_cap_s=0.2), [req("x")]))
        assert isinstance(r, ChatResult)
        assert time.monotonic() - t0 < 2.0
        first, second = srv.chat_requests
        assert second.received_at - first.received_at >= 0.2


def test_parse_retry_after_forms():
    now = time.time()
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= parse_retry_after({"retry-after": date}, now=now) <= 30.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_hang_times_out_is_retried_then_fails_others_unaffected():
    with FakeOpenAIServer(rules=[Rule("HANG", Action.hang(10))]) as srv:
        b = backend(srv, timeout_s=0.3, max_retries=2)
        t0 = time.monotonic()
        got = run(b, [req(f"q{i}") for i in range(3)] + [req("please HANG")] + [req(f"r{i}") for i in range(3)])
        elapsed = time.monotonic() - t0
        assert sorted(got) == list(range(7))
        err = only(got, 3)
        assert isinstance(err, BackendError)
        assert "timed out" in str(err) and "3 attempts" in str(err) and b.endpoint in str(err)
        assert all(isinstance(only(got, i), ChatResult) for i in (0, 1, 2, 4, 5, 6))
        hung = [c for c in srv.chat_requests if "HANG" in c.body["messages"][0]["content"]]
        assert len(hung) == 3
        assert 0.9 <= elapsed < 5


def test_malformed_json_is_retried_then_fails():
    with FakeOpenAIServer(script=lambda n, body: Action.malformed()) as srv:
        err = only(run(backend(srv, max_retries=2), [req("x")]))
        assert isinstance(err, BackendError)
        assert "malformed" in str(err) and "3 attempts" in str(err)
        assert len(srv.chat_requests) == 3


@pytest.mark.parametrize("action", [Action.malformed(), Action.empty(), Action.truncated()])
def test_bad_bodies_are_retried_then_succeed(action):
    with FakeOpenAIServer(script={0: action}) as srv:
        r = only(run(backend(srv), [req("x")]))
        assert isinstance(r, ChatResult) and r.text
        assert len(srv.chat_requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status):
    with FakeOpenAIServer(script=lambda n, body: Action.error(status, "bad parameter 'foo'")) as srv:
        b = backend(srv, max_retries=3)
        err = only(run(b, [req("x")]))
        assert isinstance(err, BackendError)
        msg = str(err)
        assert b.endpoint in msg and f"HTTP {status}" in msg and "bad parameter 'foo'" in msg and "no retry" in msg
        assert err.status == status
        assert len(srv.chat_requests) == 1


def test_gives_up_after_max_retries_on_persistent_5xx():
    with FakeOpenAIServer(script=lambda n, body: Action.error(502, "bad gateway")) as srv:
        err = only(run(backend(srv, max_retries=3), [req("x")]))
        assert isinstance(err, BackendError) and "HTTP 502" in str(err) and "4 attempts" in str(err)
        assert len(srv.chat_requests) == 4


# ------------------------------------------------------------------ concurrency and callbacks
def test_concurrency_bound_is_respected():
    with FakeOpenAIServer(latency_s=0.05) as srv:
        got = run(backend(srv, max_concurrency=4), [req(f"q{i}") for i in range(32)])
        assert len(got) == 32
        assert 2 <= srv.max_in_flight <= 4


def test_answers_wait_for_a_slow_caller_so_a_kill_loses_at_most_max_concurrency():
    """Backpressure: a request is sent only when fewer than max_concurrency requests are on the
    wire or answered but not yet handed to the caller's on_result (which stores each answer in
    the request cache). Without it a fast server runs ahead of a slow caller (an fsync per
    answer on a loaded disk), and a kill loses every answer queued in between: paid again."""
    with FakeOpenAIServer() as srv:
        consumed = 0
        ahead: list[int] = []

        def on_result(i, r):
            nonlocal consumed
            ahead.append(len(srv.chat_requests) - consumed)  # sent but not yet through on_result (this one included)
            time.sleep(0.02)
            consumed += 1

        backend(srv, max_concurrency=3).complete([req(f"q{i}") for i in range(40)], on_result)
        assert consumed == 40 and len(srv.chat_requests) == 40
        assert max(ahead) <= 3, ahead


def test_every_request_gets_exactly_one_callback():
    def script(n: int, body: dict) -> Action | None:
        text = body["messages"][0]["content"]
        if "bad" in text:
            return Action.bad_request()
        if n % 3 == 0:
            return Action.error(500)
        return None

    with FakeOpenAIServer(script=script) as srv:
        requests = [req(f"bad {i}" if i % 5 == 0 else f"good {i}") for i in range(30)]
        got = run(backend(srv, max_retries=4, max_concurrency=6), requests)
        assert sorted(got) == list(range(30))
        assert all(len(v) == 1 for v in got.values())
        for i, (r,) in got.items():
            assert isinstance(r, BackendError if i % 5 == 0 else ChatResult), (i, r)


def test_callback_exception_propagates_and_cancels_the_rest():
    with FakeOpenAIServer(latency_s=0.05) as srv:
        calls = []

        def on_result(i, r):
            calls.append(i)
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError, match="disk full"):
            backend(srv, max_concurrency=2).complete([req(f"q{i}") for i in range(20)], on_result)
        assert len(calls) == 1
        assert len(srv.chat_requests) < 20


def test_complete_works_inside_a_running_event_loop():
    with FakeOpenAIServer() as srv:
        b = backend(srv)

        async def main() -> dict:
            return run(b, [req("a"), req("b")])

        got = asyncio.run(main())
        assert all(isinstance(only(got, i), ChatResult) for i in (0, 1))

        async def amain() -> dict:
            out: dict = {}
            await b.acomplete([req("c")], lambda i, r: out.setdefault(i, []).append(r))
            return out

        assert isinstance(only(asyncio.run(amain())), ChatResult)


def test_callbacks_run_in_the_calling_thread_and_connections_are_reused():
    with FakeOpenAIServer() as srv, backend(srv) as b:
        threads = set()
        b.complete([req(f"q{i}") for i in range(6)], lambda i, r: threads.add(threading.get_ident()))
        b.complete([req("again")], lambda i, r: threads.add(threading.get_ident()))
        assert threads == {threading.get_ident()}
        loop_thread = b._runtime.thread
        assert loop_thread.is_alive()
    assert not loop_thread.is_alive()  # close() stopped it


def test_concurrent_complete_calls_share_one_concurrency_bound():
    with FakeOpenAIServer(latency_s=0.05) as srv, backend(srv, max_concurrency=3) as b:
        got: list = []
        workers = [threading.Thread(target=lambda k=k: got.append(run(b, [req(f"t{k} q{i}") for i in range(9)])))
                   for k in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert [sorted(g) for g in got] == [list(range(9))] * 3
        assert srv.max_in_flight <= 3


def test_close_then_reuse_and_pickle_without_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer() as srv:
        b = backend(srv, api_key_env=KEY_ENV)
        assert isinstance(only(run(b, [req("x")])), ChatResult)
        blob = pickle.dumps(b)
        assert SECRET.encode() not in blob
        b.close()
        monkeypatch.setenv(KEY_ENV, SECRET + "-rotated")  # read again at each call
        assert isinstance(only(run(b, [req("y")])), ChatResult)
        clone = pickle.loads(blob)
        assert clone.endpoint == b.endpoint
        assert isinstance(only(run(clone, [req("z")])), ChatResult)
        auth = [c.headers["authorization"] for c in srv.chat_requests]
        assert auth == [f"Bearer {SECRET}", f"Bearer {SECRET}-rotated", f"Bearer {SECRET}-rotated"]
        b.close()
        clone.close()


def test_empty_request_list_makes_no_call():
    with FakeOpenAIServer() as srv:
        assert run(backend(srv), []) == {}
        assert srv.requests == []


# ------------------------------------------------------------------ API key hygiene
def test_api_key_comes_from_env_and_never_leaks(monkeypatch, caplog, capfd):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    script = {
        0: Action.echo_auth(status=500),  # retried: goes through the retry log line
        1: Action.error(502, f"upstream rejected key {SECRET}"),
        2: Action.echo_auth(status=401),  # final, not retried
    }
    with FakeOpenAIServer(script=script) as srv:
        b = backend(srv, api_key_env=KEY_ENV, max_retries=3)
        err = only(run(b, [req("x")]))
        assert isinstance(err, BackendError) and "HTTP 401" in str(err)
        assert [c.headers.get("authorization") for c in srv.chat_requests] == [f"Bearer {SECRET}"] * 3
    texts = [str(err), repr(err), repr(b), str(vars(b)), caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    out, errout = capfd.readouterr()
    texts += [out, errout]
    assert "retrying" in caplog.text  # the retry lines were logged, scrubbed
    for text in texts:
        assert SECRET not in text
        assert SECRET[5:20] not in text


def test_missing_key_env_sends_placeholder(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as srv:
        only(run(backend(srv, api_key_env=KEY_ENV), [req("x")]))
        assert srv.chat_requests[0].headers["authorization"] == "Bearer EMPTY"


def test_scrub_hides_key_bearer_and_sk_tokens():
    text = "key=abc123secret, Authorization: Bearer xyz.987, other sk-proj-ABCDEF123456"
    clean = scrub(text, "abc123secret")
    assert "abc123secret" not in clean and "xyz.987" not in clean and "ABCDEF123456" not in clean


# ------------------------------------------------------------------ the fake server itself
def test_fake_server_streams_and_truncates():
    with FakeOpenAIServer(script={1: Action.truncated()}, answers={"hello": "Hi there friend"}) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=5)
        chunks = list(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], stream=True,
            stream_options={"include_usage": True}, logprobs=True, top_logprobs=3))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hi there friend"
        assert chunks[-1].usage.completion_tokens == 3
        with pytest.raises(Exception):  # noqa: B017 - a cut stream surfaces as a decode/protocol error
            list(client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello"}], stream=True))
        assert [m.id for m in client.models.list().data] == ["fake-model"]
        client.close()


def test_a_cache_id_keeps_cached_answers_when_the_server_moves(tmp_path, monkeypatch) -> None:
    """The endpoint -- and so every request-cache key -- of an openai backend includes its base
    URL; with ``cache_id`` the same model behind another port is answered from the cache."""
    from activepref.config import ModelConfig
    from activepref.core.cache import CachedBackend, RequestCache

    monkeypatch.setenv("CACHE_ID_TEST_KEY", "x")
    requests = [ChatRequest.from_messages([{"role": "user", "content": f"q{i}"}], SamplingParams(max_tokens=4, seed=i)) for i in range(3)]
    cache = RequestCache(tmp_path / "cache.sqlite")

    def ask(srv: FakeOpenAIServer, cache_id: str | None) -> list[str]:
        cfg = ModelConfig(backend="openai", model="m", base_url=srv.base_url, api_key_env="CACHE_ID_TEST_KEY", cache_id=cache_id)
        got: dict[int, ChatResult | BackendError] = {}
        CachedBackend(make_backend(cfg), cache, "generation").complete(requests, got.__setitem__)
        return [got[i].text for i in range(3)]  # type: ignore[union-attr]

    with FakeOpenAIServer() as first, FakeOpenAIServer() as second, FakeOpenAIServer() as third:
        answers = ask(first, "my-model")
        assert len(first.chat_requests) == 3
        assert ask(second, "my-model") == answers and len(second.chat_requests) == 0  # moved server, same cache_id
        ask(third, None)
        assert len(third.chat_requests) == 3  # without it the new URL is a new endpoint
    assert make_backend(ModelConfig(backend="openai", model="m", base_url="http://h:1/v1", cache_id="x")).endpoint == "x"
