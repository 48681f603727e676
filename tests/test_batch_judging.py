"""Batch judging in a live run, through the command line, against the fake server's Batch API:
the same dataset as online judging, one submission per iteration, a SIGKILL while a job is
pending resumed by polling that job, and the offline file workflow (`judge-file`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401  (autouse fixtures)
from kill_harness import sigkill_when  # noqa: E402
from servers.fake_openai import FakeOpenAIServer  # noqa: E402
from test_live_server import (  # noqa: E402
    CLI,
    ITERATIONS,
    PLAIN_PROMPTS,
    LiveScript,
    assert_ok,
    chat,
    export_jsonl,
    invoke,
    is_judge,
    status_json,
    write_config,
    write_prompts,
)


def batch_config(root: Path, name: str, srv: FakeOpenAIServer, prompts: Path, cache: Path, mode: str = "batch") -> Path:
    cfg = write_config(root, name, srv, prompts, cache)
    text = cfg.read_text()
    settings = f"mode: {mode}, batch: {{poll_interval_s: 0.05, directory: '{root / (name + '-files')}'}}, "
    assert "judge: {kind: likert, " in text
    cfg.write_text(text.replace("judge: {kind: likert, ", "judge: {kind: likert, " + settings))
    return cfg


def batch_judge_lines(srv: FakeOpenAIServer, since: int = 0) -> list:
    return [r for r in srv.chat_requests[since:] if r.method == "BATCH" and is_judge(r.body)]


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch-live")
    srv = FakeOpenAIServer(LiveScript(), batch_delay_s=0.3).start()
    prompts = write_prompts(root / "prompts.jsonl", PLAIN_PROMPTS)
    cfg = write_config(root, "online", srv, prompts, root / "online.sqlite")
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-online"))
    judge_calls = len(chat(srv)[1])
    yield {"root": root, "srv": srv, "prompts": prompts, "export": export_jsonl(root / "run-online", root / "online.jsonl"),
           "judge_calls": judge_calls}
    srv.stop()


def test_batch_mode_gives_the_online_dataset_with_one_job_per_iteration(online) -> None:
    root, srv = online["root"], online["srv"]
    cfg = batch_config(root, "batch", srv, online["prompts"], root / "batch.sqlite")
    start, jobs = len(srv.requests), len(srv.batch_submissions)
    out = root / "run-batch"
    assert_ok(invoke("run", "--config", cfg, "--out", out))
    assert len(srv.batch_submissions) - jobs == ITERATIONS  # one job per iteration, no retries needed
    online_judge = [r for r in chat(srv, start)[1] if r.method == "POST"]
    assert not online_judge  # no judge request went online
    assert len(batch_judge_lines(srv, start)) == online["judge_calls"]
    assert export_jsonl(out, root / "batch.jsonl") == online["export"]
    assert status_json(out)["stopped"] is None
    # a re-run of the config with the same cache: no submission, no call
    before, jobs = len(srv.requests), len(srv.batch_submissions)
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-batch-again"))
    assert len(srv.requests) == before and len(srv.batch_submissions) == jobs
    assert export_jsonl(root / "run-batch-again", root / "again.jsonl") == online["export"]


def test_sigkill_while_a_batch_is_pending_resumes_by_polling_it(online) -> None:
    root = online["root"]
    srv = FakeOpenAIServer(LiveScript(), batch_delay_s=3.0).start()
    try:
        cache = root / "kill.sqlite"
        cfg = batch_config(root, "kill", srv, online["prompts"], cache)
        out = root / "run-kill"
        env = {**os.environ, "ACTIVEPREF_CACHE": str(root / "unused.sqlite")}
        with open(root / "kill.log", "wb") as log:
            proc = subprocess.Popen([*CLI, "run", "--config", str(cfg), "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)
            sigkill_when(proc, lambda: bool(srv.batch_submissions), settle_s=0.3, log=root / "kill.log")
        assert not batch_judge_lines(srv)  # killed while its first job was pending
        assert status_json(out)["current"] == "selected"
        assert_ok(invoke("resume", out))
        assert len(srv.batch_submissions) == ITERATIONS  # the pending job was polled, not sent again
        assert len(batch_judge_lines(srv)) == online["judge_calls"]
        assert export_jsonl(out, root / "kill.jsonl") == online["export"]
    finally:
        srv.stop()


def test_file_mode_stops_cleanly_and_imported_results_finish_the_run(online) -> None:
    root, srv = online["root"], online["srv"]
    cfg = batch_config(root, "file", srv, online["prompts"], root / "file.sqlite", mode="file")
    out = root / "run-file"
    result = invoke("run", "--config", cfg, "--out", out)
    assert_ok(result)  # a clean stop: exit code 0
    assert "stopped: judge file" in result.output
    st = status_json(out)
    assert st["stopped"] == "stopped: judge file" and st["iterations_done"] == 0
    client = openai.OpenAI(base_url=srv.base_url, api_key="x")
    start = len(srv.requests)
    for round_ in range(ITERATIONS):
        exported = root / f"pending-{round_}.jsonl"
        assert_ok(invoke("judge-file", "export", out, "-o", exported))
        # the user's offline run: here the fake server's batch API plays vllm run-batch
        f = client.files.create(file=(exported.name, exported.open("rb")), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while b.status != "completed":
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
        results = root / f"results-{round_}.jsonl"
        results.write_text(client.files.content(b.output_file_id).text)
        imported = invoke("judge-file", "import", out, results)
        assert_ok(imported)
        assert "0 failed" in imported.output
        result = invoke("resume", out)
        assert_ok(result)
        if round_ < ITERATIONS - 1:
            assert "stopped: judge file" in result.output
            assert status_json(out)["iterations_done"] == round_ + 1
    assert status_json(out)["stopped"] is None and status_json(out)["iterations_done"] == ITERATIONS
    assert not [r for r in chat(srv, start)[1] if r.method == "POST"]  # the run itself never called the judge
    assert export_jsonl(out, root / "file.jsonl") == online["export"]
    bad = root / "bad-results.jsonl"
    bad.write_text('{"custom_id": "x", "response": null}\n{"no_id": 1}\n')
    result = invoke("judge-file", "import", out, bad)
    assert result.exit_code == 2 and "bad-results.jsonl:2: field 'custom_id'" in result.output
    assert json.loads(json.dumps(st))  # status --json stays JSON
