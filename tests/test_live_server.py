"""A live run end to end through the command line and the real ``openai`` HTTP backend,
against the scriptable fake OpenAI-compatible server (tests/servers/fake_openai.py).

One server plays every model: two generation models (``gen-a``, ``gen-b``) and the Likert
judge (``judge-m``), told apart by the request body (a judge call asks for one token with
``top_logprobs``). Answers are deterministic functions of the request, so two runs of one
config produce the same dataset whether their answers come from the server or the cache.
Faults are scheduled by tags written into the prompt texts (``[g500]``, ``[persist]``, ...),
so which request fails does not depend on arrival order.

Embedding stays offline: ``sentence_transformers`` with the shipped all-MiniLM-L6-v2
(``model: builtin``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from servers.fake_openai import Action, FakeOpenAIServer  # noqa: E402

from activepref.backends.base import BackendError, ChatRequest, SamplingParams  # noqa: E402
from activepref.backends.openai_compat import OpenAICompatBackend  # noqa: E402
from activepref.cli import app  # noqa: E402
from activepref.core.store import RunStore  # noqa: E402
from activepref.judges.rubrics import ASPECT_QUESTIONS  # noqa: E402
from activepref.pools.records import ASPECTS  # noqa: E402

GEN_MODELS = ("gen-a", "gen-b")
JUDGE_MODEL = "judge-m"
SAMPLES = 2
BATCH, ITERATIONS = 4, 2
SECRET = "sk-test-SECRET-1234567890"
KEY_ENV = "MY_TEST_KEY"
CLI = [sys.executable, "-m", "activepref"]

runner = CliRunner()


# ------------------------------------------------------------------ request helpers
def is_judge(body: dict) -> bool:
    return body.get("max_tokens") == 1 and bool(body.get("top_logprobs"))


def user_text(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m.get("role") == "user")


def judge_parts(body: dict) -> tuple[str, str, str]:
    """(instruction, response, aspect) of a Likert judge request."""
    text = user_text(body)
    instruction = text.split("## Instruction\n", 1)[1].split("\n\n## Response\n", 1)[0]
    response = text.split("\n\n## Response\n", 1)[1].split("\n\n## Question\n", 1)[0]
    aspect = next(a for a, q in ASPECT_QUESTIONS.items() if q in text)
    return instruction, response, aspect


def _h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class LiveScript:
    """The server's brain: deterministic answers and a fault schedule read from tags in the
    prompt (generation) or in the judged instruction/response (judge).

    Generation text: a hash of (model, messages, seed), 6-25 words; responses to prompts
    tagged ``[persist]`` (or ``[persist-a]``, gen-a only) carry PERSISTNODIGIT, those of
    ``[flaky]`` prompts carry FLAKYNODIGIT. Judge: two neighbouring digits, mass split by a
    hash of (response, aspect), so scores are continuous and ties improbable.

    With ``faults=True`` (a tag's fault applies to its prompt's requests):
      generation  [g500] gen-a 1st attempt 500; [g429] gen-b 1st attempt 429 Retry-After 1;
                  [ghang] gen-a 1st attempt hangs past timeout_s; [gbad] gen-b 1st attempt
                  malformed JSON; [gcut] gen-a 1st attempt body cut mid-way; [gdead] gen-b
                  always 500; [nogen] both models always 503; [auth401] gen-a always a 401
                  echoing the Authorization header.
      judge       PERSISTNODIGIT: never a digit; FLAKYNODIGIT: no digit at seed 0 only;
                  [jfault] 1st attempt per aspect: 500 / 429 / hang / malformed;
                  [jcut] 1st attempt body cut; [jecho] 1st attempt a 500 echoing the
                  Authorization header.
    ``hold(n)``: answer the next n judge requests, leave every later one hanging.
    """

    def __init__(self, faults: bool = False) -> None:
        self.faults = faults
        self.lock = threading.Lock()
        self.attempts: collections.Counter[str] = collections.Counter()
        self.hold_after: int | None = None
        self.judge_answered: list[str] = []  # canonical bodies answered while holding
        self.judge_held: list[str] = []

    def hold(self, n: int | None) -> None:
        with self.lock:
            self.hold_after = n
            self.judge_answered, self.judge_held = [], []

    def __call__(self, n: int, body: dict) -> Action | None:
        key = json.dumps(body, sort_keys=True)
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if is_judge(body):
            return self._judge(body, key, attempt)
        return self._generate(body, attempt)

    # generation
    def _generate(self, body: dict, attempt: int) -> Action:
        model, prompt = body["model"], user_text(body)
        if self.faults:
            first = attempt == 1
            if "[g500]" in prompt and model == "gen-a" and first:
                return Action.error(500, "fake internal error")
            if "[g429]" in prompt and model == "gen-b" and first:
                return Action.rate_limited("1")
            if "[ghang]" in prompt and model == "gen-a" and first:
                return Action.hang(6.0)
            if "[gbad]" in prompt and model == "gen-b" and first:
                return Action.malformed()
            if "[gcut]" in prompt and model == "gen-a" and first:
                return Action.truncated()
            if "[gdead]" in prompt and model == "gen-b":
                return Action.error(500, "upstream model gen-b is down")
            if "[nogen]" in prompt:
                return Action.unavailable()
            if "[auth401]" in prompt and model == "gen-a":
                return Action.echo_auth(401)
        h = _h(model, body["messages"], body.get("seed"))
        marks = []
        if "[persist]" in prompt or ("[persist-a]" in prompt and model == "gen-a"):
            marks.append("PERSISTNODIGIT")
        if "[flaky]" in prompt:
            marks.append("FLAKYNODIGIT")
        words = [(h * 2)[i : i + 4] for i in range(8, 8 + 4 * (6 + int(h[:2], 16) % 20), 4)]
        return Action.reply(" ".join([*marks, f"{model}:", *words]) + ".")

    # judge
    def _judge(self, body: dict, key: str, attempt: int) -> Action:
        instruction, response, aspect = judge_parts(body)
        with self.lock:
            if self.hold_after is not None:
                if len(self.judge_answered) >= self.hold_after:
                    self.judge_held.append(key)
                    return Action.hang(120.0)
                self.judge_answered.append(key)
        if self.faults:
            if "PERSISTNODIGIT" in response:
                return Action.no_digit()
            if "FLAKYNODIGIT" in response and body.get("seed") == 0:
                return Action.no_digit()
            if attempt == 1 and "[jfault]" in instruction:
                return {
                    "helpfulness": Action.error(500),
                    "truthfulness": Action.rate_limited("1"),
                    "honesty": Action.hang(6.0),
                    "instruction_following": Action.malformed(),
                }[aspect]
            if attempt == 1 and "[jcut]" in instruction:
                return Action.truncated()
            if attempt == 1 and "[jecho]" in instruction:
                return Action("error", status=500, message="proxy failure", echo_header=True)
        h = _h(response, aspect)
        level = int(h[:6], 16) / 0xFFFFFF * 3.999
        low, frac = int(level), level - int(level)
        dist = [("The", -0.3), (str(low + 1), math.log(max(1 - frac, 1e-6))), (str(low + 2), math.log(max(frac, 1e-6))),
                ("I", -4.0), ("**", -5.0)]
        return Action.reply(top_logprobs=dist)


def expected_judge_score(response: str) -> float:
    """What the Likert judge must compute from LiveScript's distributions (mean over aspects)."""
    total = 0.0
    for aspect in ASPECTS:
        level = int(_h(response, aspect)[:6], 16) / 0xFFFFFF * 3.999
        low, frac = int(level), level - int(level)
        p1, p2 = max(1 - frac, 1e-6), max(frac, 1e-6)
        total += ((low + 1) * p1 + (low + 2) * p2) / (p1 + p2)
    return total / len(ASPECTS)


# ------------------------------------------------------------------ run helpers
def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def write_config(
    root: Path, name: str, srv: FakeOpenAIServer, prompts: Path, cache: Path, *,
    timeout_s: float = 30.0, gen_retries: int = 2, judge_retries: int = 2,
    api_key_env: str | None = None, audit_log: Path | None = None,
) -> Path:
    key = f", api_key_env: {api_key_env}" if api_key_env else ""
    models = "".join(
        f"    - {{name: {m}, backend: openai, base_url: '{srv.base_url}', model: {m}, timeout_s: {timeout_s}, "
        f"max_retries: {gen_retries}, max_concurrency: 8{key}}}\n"
        for m in GEN_MODELS
    )
    audit = f", audit_log: '{audit_log}'" if audit_log else ""
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"prompts: {prompts}\nmethod: dts\nbatch_size: {BATCH}\niterations: {ITERATIONS}\nseed: 3\n"
        f"generation:\n  samples_per_model: {SAMPLES}\n  max_tokens: 48\n  models:\n{models}"
        "embedding: {backend: sentence_transformers, model: builtin}\n"
        f"judge: {{kind: likert, backend: openai, base_url: '{srv.base_url}', model: {JUDGE_MODEL}, "
        f"timeout_s: {timeout_s}, max_retries: {judge_retries}, max_concurrency: 16{key}{audit}}}\n"
        f"cache_path: '{cache}'\n"
        "enn: {heads: 4, hidden: 8, steps: 10, lr: 0.01}\n"
    )
    return cfg


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output


def status_json(run_dir: Path) -> dict:
    result = invoke("status", run_dir, "--json")
    assert_ok(result)
    return json.loads(result.stdout)


def export_jsonl(run_dir: Path, dest: Path) -> list[dict]:
    assert_ok(invoke("export", run_dir, "--format", "jsonl", "-o", dest))
    return [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]


def chat(srv: FakeOpenAIServer, since: int = 0) -> tuple[list, list]:
    """(generation requests, judge requests) the server received from index ``since`` on."""
    reqs = [r for r in srv.chat_requests[since:] if isinstance(r.body, dict)]
    return [r for r in reqs if not is_judge(r.body)], [r for r in reqs if is_judge(r.body)]


def canon(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


def selected_responses(run_dir: Path) -> dict[int, list[int]]:
    """prompt idx -> response idxs the acquisition asked the judge to score."""
    from activepref.core.candidates import CandidateTable

    with RunStore.open_readonly(run_dir) as store:
        _, response_prompt = store.responses()
        table = CandidateTable.build(response_prompt, store.count("prompts"))
        out: dict[int, list[int]] = {}
        for rec in store.iterations():
            assert rec.proposal is not None
            for row, p in enumerate(rec.prompt_idxs):
                annotate = rec.proposal["annotate"][row]
                out[p] = [int(table.slots[p][j]) for j, a in enumerate(annotate) if a]
        return out


# ------------------------------------------------------------------ fixtures
from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401  (autouse fixtures)

PLAIN_PROMPTS = [f"Question number {i}: how would you explain topic {i} to a beginner?" for i in range(8)]


@pytest.fixture(scope="module")
def happy(tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted live run (8 prompts, 2 models x 2 samples, batch 4, 2 iterations, dts)."""
    root = tmp_path_factory.mktemp("live")
    script = LiveScript()
    srv = FakeOpenAIServer(script).start()
    prompts = write_prompts(root / "prompts.jsonl", PLAIN_PROMPTS)
    cfg = write_config(root, "live", srv, prompts, root / "cache.sqlite")
    out = root / "run"
    result = invoke("run", "--config", cfg, "--out", out)
    assert_ok(result)
    n_requests = len(srv.requests)
    judge_bodies = [canon(r.body) for r in chat(srv)[1]]
    export = export_jsonl(out, root / "export.jsonl")
    yield {"root": root, "srv": srv, "script": script, "prompts": prompts, "cfg": cfg, "out": out,
           "n_requests": n_requests, "judge_bodies": judge_bodies, "export": export, "cli": result}
    srv.stop()


# ------------------------------------------------------------------ 1. happy path
def test_live_run_through_the_cli_judges_only_the_selected_responses(happy) -> None:
    srv, out, export = happy["srv"], happy["out"], happy["export"]
    gen, judge = chat(srv)
    assert len(gen) + len(judge) == happy["n_requests"] == len(srv.requests)  # nothing but chat requests

    # generation: prompts x models x samples_per_model, each model asked under its own name
    assert len(gen) == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES
    assert collections.Counter(r.body["model"] for r in gen) == {m: len(PLAIN_PROMPTS) * SAMPLES for m in GEN_MODELS}
    assert all(r.body["max_tokens"] == 48 and not r.body.get("logprobs") for r in gen)
    assert not any(r.body.get("stream") for r in srv.chat_requests)  # the backend never streams

    # judge: 1 token, top 20 logprobs, greedy; only the selected responses, 4 aspects each, once
    assert all(r.body["model"] == JUDGE_MODEL and r.body["logprobs"] is True and r.body["top_logprobs"] == 20
               and r.body["temperature"] == 0.0 for r in judge)
    selected = selected_responses(out)
    assert sorted(selected) == list(range(len(PLAIN_PROMPTS)))  # every prompt was in a batch
    with RunStore.open_readonly(out) as store:
        responses, response_prompt = store.responses()
        prompts = [p for p, _, _ in store.prompts()]
        scores = {r: v for r, v in store.conn.execute("SELECT response_idx, value FROM scores")}
        assert store.count("judge_failures") == 0
    assert len(responses) == len(gen)  # every generated answer is a candidate
    chosen_idx = sorted(r for rs in selected.values() for r in rs)
    assert len(chosen_idx) == 2 * len(PLAIN_PROMPTS)  # dts: two of the four candidates per prompt
    assert sorted(scores) == chosen_idx
    assert len(judge) == len(ASPECTS) * len(chosen_idx)
    asked = collections.Counter((judge_parts(r.body)[1], judge_parts(r.body)[2]) for r in judge)
    assert asked == {(responses[i].text, a): 1 for i in chosen_idx for a in ASPECTS}
    for r in judge:  # instruction and response come before the aspect question (prefix caching)
        instruction, response, aspect = judge_parts(r.body)
        text = user_text(r.body)
        assert r.body["messages"][0]["role"] == "system" and r.body["messages"][-1]["role"] == "user"
        assert text.index(instruction) < text.index(response) < text.index(ASPECT_QUESTIONS[aspect])
        assert instruction in PLAIN_PROMPTS
    for i in chosen_idx:  # the expected score over the digits, as the server's distributions imply
        assert scores[i] == pytest.approx(expected_judge_score(responses[i].text), abs=1e-6)
        assert prompts[int(response_prompt[i])].text in PLAIN_PROMPTS

    st = status_json(out)
    assert st["iterations_done"] == st["iterations_planned"] == ITERATIONS and st["current"] is None
    assert st["pairs"] == len(export) >= len(PLAIN_PROMPTS) - 1  # a tie is possible, not likely
    assert st["annotations"] == len(chosen_idx) and st["failures"] == 0
    assert st["summary"]["judge_requests"] == len(judge)
    assert st["summary"]["stages"]["generation"]["calls"] == len(gen)
    assert st["summary"]["stages"]["judge"]["calls"] == len(judge)

    # the export is a TRL conversational preference dataset
    for row in export:
        assert {"prompt", "chosen", "rejected"} <= set(row)
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["prompt"][0]["content"] in PLAIN_PROMPTS
        for side in ("chosen", "rejected"):
            assert len(row[side]) == 1 and row[side][0]["role"] == "assistant" and row[side][0]["content"]
        assert row["chosen"] != row["rejected"]
        assert row["score_chosen"] > row["score_rejected"]
        assert {row["model_chosen"], row["model_rejected"]} <= set(GEN_MODELS)
        assert row["method"] == "dts"
    parquet = happy["root"] / "export.parquet"
    assert_ok(invoke("export", out, "-o", parquet))
    table = pq.read_table(parquet)
    assert table.num_rows == len(export)
    assert table.to_pylist()[0]["chosen"] == export[0]["chosen"]


# ------------------------------------------------------------------ 3. zero repeated calls
def test_resume_of_a_finished_run_and_a_rerun_with_the_same_cache_make_no_request(happy) -> None:
    srv, root = happy["srv"], happy["root"]
    before = len(srv.requests)
    result = invoke("resume", happy["out"])
    assert_ok(result)
    assert "nothing to do" in result.stdout
    assert len(srv.requests) == before

    again = root / "run-again"
    assert_ok(invoke("run", "--config", happy["cfg"], "--out", again))
    assert len(srv.requests) == before  # every answer came from the request cache
    assert export_jsonl(again, root / "again.jsonl") == happy["export"]
    st = status_json(again)
    stages = st["summary"]["stages"]
    assert stages["generation"]["calls"] == 0 and stages["judge"]["calls"] == 0
    assert stages["generation"]["cache_hits"] == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES


def _judge_rows(cache: Path) -> int:
    if not cache.exists():
        return 0
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM request_cache WHERE stage = 'judge'").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        conn.close()


def test_sigkill_mid_judging_then_resume_repeats_no_answered_call(happy) -> None:
    """A `run` process is killed (SIGKILL) while iteration 0 is being judged: 10 judge answers
    are in its request cache, the rest of its requests hang on the server. `resume` in a
    new process must not resend any answered request, and must give the uninterrupted export."""
    srv, script, root = happy["srv"], happy["script"], happy["root"]
    judge_ref = happy["judge_bodies"]  # the uninterrupted run's judge requests
    uninterrupted = len(judge_ref)
    cache = root / "cache-kill.sqlite"
    cfg = write_config(root, "kill", srv, happy["prompts"], cache)  # same run, a fresh cache
    out = root / "run-kill"
    start = len(srv.requests)
    answered_first = 10
    script.hold(answered_first)
    env = {**os.environ, "ACTIVEPREF_CACHE": str(root / "unused-default-cache.sqlite")}
    log = open(root / "kill.log", "wb")  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen([*CLI, "run", "--config", str(cfg), "--out", str(out)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (len(script.judge_held) >= 1 and len(script.judge_answered) >= answered_first):
            assert proc.poll() is None, f"the run ended early: {(root / 'kill.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the run never reached the judge"
            time.sleep(0.05)
        grace = time.monotonic() + 10  # the answers reach the client's request cache a moment later
        while _judge_rows(cache) < answered_first and time.monotonic() < grace:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    answered, held = list(script.judge_answered), list(script.judge_held)
    script.hold(None)
    gen1, judge1 = chat(srv, start)
    assert len(answered) == answered_first and len(judge1) == len(answered) + len(held)
    st = status_json(out)
    assert st["iterations_done"] == 0 and st["current"] == "selected"  # killed mid-judging

    mid = len(srv.requests)
    result = invoke("resume", out)
    assert_ok(result)
    gen2, judge2 = chat(srv, mid)
    resent = {canon(r.body) for r in judge2}
    assert not resent & set(answered)  # no answered judge call was repeated
    assert set(held) <= resent  # the ones cut off by the kill were asked again (never answered)
    assert len(answered) + len(judge2) == uninterrupted
    assert {canon(r.body) for r in judge1} | resent == set(judge_ref)
    # generation: iteration 0 before the kill, iteration 1 after it, none twice
    assert len(gen1) + len(gen2) == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES
    assert not {canon(r.body) for r in gen1} & {canon(r.body) for r in gen2}
    assert export_jsonl(out, root / "kill.jsonl") == happy["export"]


# ------------------------------------------------------------------ 2. failure injection
FAULT_PROMPTS = [
    "[g500] [jfault] What is the boiling point of water at altitude?",
    "[g429] [flaky] Summarise the causes of the French revolution.",
    "[ghang] [jcut] Write a haiku about the sea.",
    "[gbad] [persist] Explain recursion with an example.",
    "[gcut] [persist-a] How do vaccines train the immune system?",
    "[gdead] Give three tips for learning a language.",
    "[nogen] Why is the sky blue?",
    "Plain question: what is a prime number?",
]


def test_faults_during_a_live_run_are_retried_or_recorded_and_nothing_is_lost(tmp_path) -> None:
    script = LiveScript(faults=True)
    with FakeOpenAIServer(script) as srv:
        prompts = write_prompts(tmp_path / "prompts.jsonl", FAULT_PROMPTS)
        cfg = write_config(tmp_path, "faults", srv, prompts, tmp_path / "cache.sqlite", timeout_s=1.5)
        out = tmp_path / "run"
        result = invoke("run", "--config", cfg, "--out", out)
        assert_ok(result)
        gen, judge = chat(srv)
        actions = collections.Counter(r.action for r in srv.chat_requests)
    # every kind of fault happened
    for kind in ("error500", "error429", "error503", "hang", "malformed", "truncated", "reply"):
        assert actions[kind] > 0, (kind, actions)
    assert not any(r.body.get("stream") for r in gen + judge)  # no streaming: a cut SSE stream cannot occur
    # the retry after a 429 waited for Retry-After (1 s); the one after a hang came at timeout_s (1.5 s),
    # long before the hanging answer (6 s) would have arrived
    reqs = srv.chat_requests
    for i, r in enumerate(reqs):
        if r.action in ("error429", "hang"):
            retry = next(x for x in reqs[i + 1 :] if x.body == r.body)
            gap = retry.received_at - r.received_at
            assert (gap >= 1.0) if r.action == "error429" else (1.5 <= gap < 6.0), (r.action, gap)

    st = status_json(out)
    assert st["iterations_done"] == ITERATIONS
    with RunStore.open_readonly(out) as store:
        prompts_ = [p for p, _, _ in store.prompts()]
        responses, response_prompt = store.responses()
        scores = dict(store.conn.execute("SELECT response_idx, value FROM scores").fetchall())
        failures = dict(store.conn.execute("SELECT response_idx, error FROM judge_failures").fetchall())
        gen_failures = store.conn.execute("SELECT prompt_idx, model, error FROM generation_failures").fetchall()
        prefs = store.preference_rows()
        pair_status = [json.loads(s) for (s,) in store.conn.execute("SELECT pair_status FROM iterations ORDER BY iteration")]
        processed = [p for rec in store.iterations() for p in rec.prompt_idxs]
    by_text = {p.text: i for i, p in enumerate(prompts_)}
    cands = collections.Counter(int(p) for p in response_prompt)

    # generation: transient faults recovered (4 candidates), persistent ones recorded
    for tag in ("[g500]", "[g429]", "[ghang]", "[gbad]", "[gcut]"):
        p = next(i for t, i in by_text.items() if t.startswith(tag))
        assert cands[p] == 4, tag
    dead, nogen = by_text[FAULT_PROMPTS[5]], by_text[FAULT_PROMPTS[6]]
    assert cands[dead] == 2 and cands[nogen] == 0
    assert sorted((p, m) for p, m, _ in gen_failures) == sorted([(dead, "gen-b")] * 2 + [(nogen, "gen-a")] * 2 + [(nogen, "gen-b")] * 2)
    assert all("HTTP 5" in e for _, _, e in gen_failures)
    assert st["summary"]["generation_failures"] == 6

    # judge: persistent no-digit -> recorded failure, never a score; transient -> recovered
    assert st["failures"] == len(failures) > 0
    assert st["summary"]["judge_failures"] == len(failures)
    for r, err in failures.items():
        assert "PERSISTNODIGIT" in responses[r].text
        assert "no digit" in err
        assert r not in scores
    selected = selected_responses(out)
    for r in (r for rs in selected.values() for r in rs):
        assert (r in scores) != (r in failures)  # every selected response: a score or a failure
        if r in scores:
            assert "PERSISTNODIGIT" not in responses[r].text
            assert scores[r] == pytest.approx(expected_judge_score(responses[r].text), abs=1e-6)
    persist = by_text[FAULT_PROMPTS[3]]
    assert selected[persist] and all(r in failures for r in selected[persist])
    flaky = by_text[FAULT_PROMPTS[1]]
    assert selected[flaky] and all(r in scores for r in selected[flaky])
    assert any(r.body.get("seed") == 1 and "FLAKYNODIGIT" in judge_parts(r.body)[1] for r in judge)
    # a persistently failing response was asked with max_retries + 1 = 3 seeds per aspect, no more
    persist_seeds: dict[tuple[str, str], set] = collections.defaultdict(set)
    for r in judge:
        if "PERSISTNODIGIT" in judge_parts(r.body)[1]:
            persist_seeds[judge_parts(r.body)[1:]].add(r.body.get("seed"))
    assert persist_seeds and all(seeds == {0, 1, 2} for seeds in persist_seeds.values())

    # no preference uses a failed response; every processed prompt has a pair or a reason
    assert sorted(processed) == list(range(len(FAULT_PROMPTS)))
    paired = {pref.prompt_idx for pref in prefs}
    for pref in prefs:
        c, rj, sc, sr = pref.chosen_idx, pref.rejected_idx, pref.score_chosen, pref.score_rejected
        assert c not in failures and rj not in failures
        assert sc == scores[c] and sr == scores[rj] and sc > sr
    assert persist not in paired and nogen not in paired and flaky in paired
    reasons: dict[int, str] = {}
    for p in range(len(FAULT_PROMPTS)):
        if p in paired:
            continue
        if any(r in failures for r in selected.get(p, [])):
            reasons[p] = "failed"
        elif cands[p] < 2:
            reasons[p] = "skipped"
            assert any(gp == p for gp, _, _ in gen_failures)
        else:
            sel = selected[p]
            assert len(sel) == 2 and scores[sel[0]] == scores[sel[1]], f"prompt {p} lost without a reason"
            reasons[p] = "tie"
    total = collections.Counter()
    for counts in pair_status:
        total.update(counts)
    assert sum(total.values()) == len(FAULT_PROMPTS)
    assert total["ok"] == len(prefs) == st["pairs"]
    assert {k: v for k, v in total.items() if k != "ok" and v} == dict(collections.Counter(reasons.values()))


# ------------------------------------------------------------------ 4. secrets
SECRET_PROMPTS = [
    "[auth401] Name a mammal that lays eggs.",
    "[jecho] Describe a rainbow in one sentence.",
    "[g500] [jfault] Translate 'hello' into French.",
    "[persist] Is zero an even number?",
    "What is the capital of Australia?",
    "[flaky] Give a synonym for 'quick'.",
    "[gdead] How many legs does a spider have?",
    "Plain: what does a thermometer measure?",
]


def test_the_api_key_appears_nowhere(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP libraries' debug lines included
    script = LiveScript(faults=True)
    audit = tmp_path / "audit.jsonl"
    with FakeOpenAIServer(script, require_api_key=SECRET) as srv:
        prompts = write_prompts(tmp_path / "prompts.jsonl", SECRET_PROMPTS)
        cache = tmp_path / "cache.sqlite"
        cfg = write_config(tmp_path, "secret", srv, prompts, cache, timeout_s=1.5,
                           api_key_env=KEY_ENV, audit_log=audit)
        out = tmp_path / "run"
        outputs = []
        for args in (("run", "--config", cfg, "--out", out), ("status", out), ("status", out, "--json"),
                     ("export", out, "--format", "jsonl", "-o", tmp_path / "export.jsonl"),
                     ("export", out, "-o", tmp_path / "export.parquet")):
            result = invoke(*args)
            assert_ok(result)
            outputs += [result.stdout, result.stderr]
        # the key was really in use (the server demands it), and echoed back in error bodies
        assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in srv.chat_requests)
        assert not any(r.action == "unauthorized" for r in srv.chat_requests)
        actions = collections.Counter(r.action for r in srv.chat_requests)
        assert actions["error401"] > 0 and actions["error500"] > 0

        # the 401 (a non-retryable error) is recorded as a generation failure, scrubbed
        with RunStore.open_readonly(out) as store:
            gen_failures = store.conn.execute("SELECT model, error FROM generation_failures").fetchall()
            assert store.count("judge_failures") > 0
        errors_401 = [e for m, e in gen_failures if "HTTP 401" in e]
        assert errors_401 and all("no retry" in e and "Incorrect API key" in e for e in errors_401)

        # the same through the backend directly: the error text of a 401
        backend = OpenAICompatBackend("gen-a", srv.base_url, api_key_env=KEY_ENV, max_retries=0, timeout_s=5)
        got: list = []
        backend.complete([ChatRequest.from_messages([{"role": "user", "content": "[auth401] hi"}], SamplingParams(max_tokens=8))],
                         lambda i, r: got.append(r))
        backend.close()
        assert len(got) == 1 and isinstance(got[0], BackendError)
        err = got[0]
        assert "401" in str(err) and getattr(err, "status", None) == 401
        for text in (str(err), repr(err), repr(err.args), repr(backend)):
            assert SECRET not in text

    needle = SECRET.encode()
    files = [p for p in out.rglob("*") if p.is_file()]
    files += [p for p in tmp_path.glob("cache.sqlite*")] + [tmp_path / "export.jsonl", tmp_path / "export.parquet", audit]
    assert any(p.name == "run.sqlite" for p in files) and cache in files and audit.exists()
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
    for text in outputs:
        assert SECRET not in text
    assert caplog.records  # the retries and failures were logged
    for rec in caplog.records:
        assert SECRET not in rec.getMessage(), rec.name
        assert SECRET not in repr(rec.args) and SECRET not in str(rec.exc_info or "")
    assert SECRET not in caplog.text
    # and the key is not hiding in a shorter form (the scrubber must not leave a tail)
    assert "SECRET-1234567890" not in caplog.text and b"SECRET-1234567890" not in b"".join(p.read_bytes() for p in files)
