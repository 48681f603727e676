"""The batch backend against the fake server's Files and Batch API: one job per call, answers
identical to online ones, failed or expired lines retried as a smaller job and then reported,
a pending job polled (never submitted again) by a new process, and a job created but never
journaled found by its metadata."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from kill_harness import sigkill_when
from servers.fake_openai import Action, FakeOpenAIServer, Rule

from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams
from activepref.backends.openai_batch import METADATA_KEY, BatchBackend, BatchOptions, JudgeFilePending, request_lines
from activepref.backends.openai_compat import OpenAICompatBackend, chat_body
from activepref.core.batch_journal import FINISHED, SUBMITTING, BatchJournal, BatchLine
from activepref.core.cache import CachedBackend, RequestCache
from activepref.core.judge_files import import_results

FAST = BatchOptions(poll_interval_s=0.02, max_retries=2)


def requests(n: int, tag: str = "q") -> list[ChatRequest]:
    judge = SamplingParams(temperature=0.0, max_tokens=1, seed=0, top_logprobs=20)
    plain = SamplingParams(temperature=0.7, max_tokens=12, seed=1)
    return [
        ChatRequest.from_messages([{"role": "user", "content": f"{tag} {i}"}], judge if i % 2 else plain) for i in range(n)
    ]


def run(backend, reqs: list[ChatRequest]) -> dict[int, ChatResult | BackendError]:
    out: dict[int, ChatResult | BackendError] = {}
    backend.complete(reqs, out.__setitem__)
    assert sorted(out) == list(range(len(reqs)))
    return out


def batch_backend(srv: FakeOpenAIServer, cache: RequestCache, options: BatchOptions = FAST, **kw) -> BatchBackend:
    return BatchBackend("fake-model", BatchJournal(cache.path), options, base_url=srv.base_url, **kw)


def batch_lines(srv: FakeOpenAIServer) -> list:
    return [r for r in srv.chat_requests if r.method == "BATCH"]


def test_one_job_per_call_same_answers_as_online_and_a_rerun_makes_no_call(tmp_path) -> None:
    reqs = requests(12)
    with FakeOpenAIServer() as srv:
        online = run(OpenAICompatBackend("fake-model", srv.base_url), reqs)
        srv.reset_stats()
        cache = RequestCache(tmp_path / "c.sqlite")
        backend = batch_backend(srv, cache)
        got = run(CachedBackend(backend, cache, "judge"), reqs)
        assert srv.batch_submissions and len(srv.batch_submissions) == 1
        assert len(batch_lines(srv)) == 12 and not [r for r in srv.chat_requests if r.method == "POST"]
        for i in range(12):
            a, b = online[i], got[i]
            assert isinstance(a, ChatResult) and isinstance(b, ChatResult)
            assert (a.text, a.first_token_logprobs, a.completion_tokens) == (b.text, b.first_token_logprobs, b.completion_tokens)
        # the same endpoint as online: the batch answers are the online backend's cache entries
        assert backend.endpoint == OpenAICompatBackend("fake-model", srv.base_url).endpoint
        assert cache.totals("judge")[0] == 12
        again = run(CachedBackend(batch_backend(srv, cache), cache, "judge"), reqs)
        assert len(srv.batch_submissions) == 1 and len(batch_lines(srv)) == 12
        assert all(again[i] == got[i] for i in range(12))
        assert all(j.state == FINISHED for j in BatchJournal(cache.path).jobs())


def test_failed_and_expired_lines_are_retried_in_a_smaller_job_then_reported(tmp_path) -> None:
    rules = [
        Rule("q 1", Action.expired(), times=1),  # expires once: answered by the retry job
        Rule("q 2", Action.error(500), times=1),  # a 5xx once: answered by the retry job
        Rule("q 3", Action.error(400, "bad parameter")),  # a 4xx: no retry, reported
        Rule("q 4", Action.error(503)),  # always 503: retried twice, then reported
        Rule("q 5", Action.malformed(), times=1),  # a cut body once: retried
    ]
    reqs = requests(8)
    with FakeOpenAIServer(rules=rules) as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        got = run(CachedBackend(batch_backend(srv, cache), cache, "judge"), reqs)
        assert len(srv.batch_submissions) == 3  # the job, a retry of 1 2 4 5, a retry of 4
        assert len(batch_lines(srv)) == 8 + 4 + 1
        ok = {i for i, r in got.items() if isinstance(r, ChatResult)}
        assert ok == {0, 1, 2, 5, 6, 7}
        assert "HTTP 400" in str(got[3]) and "1 job" in str(got[3])
        assert "HTTP 503" in str(got[4]) and "3 jobs" in str(got[4])
        # the reported failures are journaled: asking again reports them without a new job
        again = run(CachedBackend(batch_backend(srv, cache), cache, "judge"), reqs)
        assert len(srv.batch_submissions) == 3
        assert isinstance(again[3], BackendError) and isinstance(again[4], BackendError)


def test_a_failed_batch_reports_every_line_without_retrying(tmp_path, monkeypatch) -> None:
    import activepref.backends.openai_batch as ob

    monkeypatch.setattr(ob, "request_lines", lambda lines: request_lines(lines).replace('"POST"', '"GET"'))
    with FakeOpenAIServer() as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        got = run(CachedBackend(batch_backend(srv, cache), cache, "judge"), requests(3))
        assert all(isinstance(r, BackendError) and "batch failed" in str(r) for r in got.values())
        assert len(srv.batch_submissions) == 1 and not batch_lines(srv)


CHILD = textwrap.dedent("""
    import sys
    from activepref.backends.base import ChatRequest, SamplingParams
    from activepref.backends.openai_batch import BatchBackend, BatchOptions
    from activepref.core.batch_journal import BatchJournal
    from activepref.core.cache import CachedBackend, RequestCache
    base_url, cache_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = RequestCache(cache_path)
    b = BatchBackend("fake-model", BatchJournal(cache.path), BatchOptions(poll_interval_s=0.02), base_url=base_url)
    reqs = [ChatRequest.from_messages([{"role": "user", "content": f"q {i}"}], SamplingParams(max_tokens=8, seed=i))
            for i in range(n)]
    CachedBackend(b, cache, "judge").complete(reqs, lambda i, r: None)
    print("done", flush=True)
""")


def test_sigkill_while_a_job_is_pending_then_a_new_process_polls_the_same_job(tmp_path) -> None:
    with FakeOpenAIServer(batch_delay_s=2.0) as srv:
        cache_path = tmp_path / "c.sqlite"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, srv.base_url, str(cache_path), "6"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sigkill_when(proc, lambda: bool(srv.batch_submissions), settle_s=0.2)  # journaled, polling
        assert not batch_lines(srv)  # killed while the job was pending
        cache = RequestCache(cache_path)
        reqs = [ChatRequest.from_messages([{"role": "user", "content": f"q {i}"}], SamplingParams(max_tokens=8, seed=i))
                for i in range(6)]
        backend = batch_backend(srv, cache)
        got = run(CachedBackend(backend, cache, "judge"), reqs)
        assert all(isinstance(r, ChatResult) for r in got.values())
        assert len(srv.batch_submissions) == 1 and backend.submissions == 0  # polled, not submitted again
        assert len(batch_lines(srv)) == 6


def test_a_job_created_but_not_journaled_is_found_by_its_metadata(tmp_path) -> None:
    """The kill came between batches.create and the journal write: the journal says
    'submitting' and knows no batch id; the resumed process must adopt the batch."""
    reqs = requests(4)
    with FakeOpenAIServer() as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        backend = batch_backend(srv, cache)
        journal = backend.journal
        lines = [BatchLine(r.cache_key(backend.endpoint), chat_body("fake-model", r)) for r in reqs]
        job = journal.new_job("openai", backend.endpoint, "judge", 0, lines, SUBMITTING)
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        f = client.files.create(file=("in.jsonl", io.BytesIO(request_lines(lines).encode())), purpose="batch")
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={METADATA_KEY: job.job})
        got = run(CachedBackend(backend, cache, "judge"), reqs)
        assert all(isinstance(r, ChatResult) for r in got.values())
        assert len(srv.batch_submissions) == 1 and backend.submissions == 0


def test_file_mode_writes_requests_and_imported_results_answer_them(tmp_path) -> None:
    reqs = requests(5)
    cache = RequestCache(tmp_path / "c.sqlite")
    opts = BatchOptions(poll_interval_s=0.02, max_retries=1, directory=str(tmp_path / "files"))
    backend = BatchBackend("judge-m", BatchJournal(cache.path), opts, provider="file", base_url="http://gpu-box:8000/v1")
    with pytest.raises(JudgeFilePending) as info:
        run(CachedBackend(backend, cache, "judge"), reqs)
    (path,) = info.value.paths
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert [x["url"] for x in lines] == ["/v1/chat/completions"] * 5 and all(x["body"]["model"] == "judge-m" for x in lines)
    # asking again while waiting writes nothing new
    with pytest.raises(JudgeFilePending):
        run(CachedBackend(backend, cache, "judge"), reqs)
    assert len(list((tmp_path / "files").iterdir())) == 1
    # run the file on a server's batch API (as vllm run-batch would), one line failing
    with FakeOpenAIServer(rules=[Rule("q 2", Action.error(500), times=1)]) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        f = client.files.create(file=("in.jsonl", open(path, "rb")), purpose="batch")
        b = client.batches.retrieve(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                          completion_window="24h").id)
        results = tmp_path / "results.jsonl"
        results.write_text(client.files.content(b.output_file_id).text + client.files.content(b.error_file_id).text)
        bad = tmp_path / "bad.jsonl"
        bad.write_text(results.read_text() + "{not json\n")
        from activepref.errors import ActivePrefError

        with pytest.raises(ActivePrefError, match=r"bad.jsonl:6: not JSON"):
            import_results(backend.journal, cache, bad)
        report = import_results(backend.journal, cache, results)
        assert (report.answered, report.failed, report.unknown) == (4, 1, 0)
        # resume: four answers come from the cache, the failed line goes out as a new file
        with pytest.raises(JudgeFilePending) as info2:
            run(CachedBackend(backend, cache, "judge"), reqs)
        assert info2.value.lines == 1
        retry = Path(info2.value.paths[0])
        f2 = client.files.create(file=("in2.jsonl", open(retry, "rb")), purpose="batch")
        b2 = client.batches.retrieve(client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions",
                                                           completion_window="24h").id)
        (tmp_path / "r2.jsonl").write_text(client.files.content(b2.output_file_id).text)
        assert import_results(backend.journal, cache, tmp_path / "r2.jsonl").answered == 1
    got = run(CachedBackend(backend, cache, "judge"), reqs)
    assert all(isinstance(r, ChatResult) for r in got.values())
