"""Batch judging: a ``ChatBackend`` that sends its requests as one batch job instead of one
call each (``judge: {mode: batch}``, at the providers' batch price), or writes them to a file
for an offline run (``mode: file``).

``complete(requests, on_result)`` is as synchronous as the online backend's: it returns when
every request has an answer or a failure. Inside, per call:

1. every request's request-cache key (the line's ``custom_id``) is looked up in the batch
   journal (:mod:`activepref.core.batch_journal`, in the request cache's file): a key held by
   an open job is *polled*, never submitted again; a key whose last job recorded it as failed
   is reported failed again; the other keys form one new job;
2. a new job is journaled before the provider hears of it, with our job id in the batch's
   ``metadata`` (``activepref_job``): a process killed between ``batches.create`` and the
   journal write finds the batch by that id on resume instead of creating a second one;
3. each job is polled every ``poll_interval_s`` until it ends (completed, expired, failed,
   cancelled); every result line is handed to ``on_result`` (which, behind
   :class:`~activepref.core.cache.CachedBackend`, commits it to the request cache) before the
   job is marked finished;
4. lines that failed for a reason worth retrying (expired, HTTP 408/429/5xx, malformed body,
   no line at all) go out again as a new, smaller job, up to ``max_retries`` times; then, and
   for any other failure, the request is reported as a :class:`BackendError`.

Provider ``openai``: any server with the OpenAI Files and Batch API (OpenAI; vLLM's and
LiteLLM's batch endpoints), through the official client. Provider ``file``: the job's lines are
written as JSONL in the OpenAI batch format (which ``vllm run-batch`` reads) and the run stops
with :class:`JudgeFilePending`; ``activepref judge-file import`` brings the results file back
into the request cache and ``activepref resume`` continues.

The endpoint (the request cache's identity of the model) is the online backend's, so a request
answered in batch mode is a cache hit in online mode and the other way round.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult
from activepref.backends.openai_compat import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    PLACEHOLDER_API_KEY,
    _Failure,
    _retryable_status,
    _shorten,
    _without_userinfo,
    chat_body,
    parse_completion,
    scrub,
)
from activepref.core.batch_journal import (
    FINISHED,
    IMPORTED,
    SUBMITTED,
    SUBMITTING,
    WAITING,
    BatchJob,
    BatchJournal,
    BatchLine,
    LineOutcome,
)
from activepref.errors import ActivePrefError, RunStopped

if TYPE_CHECKING:
    import openai

    from activepref.config import JudgeConfig
    from activepref.core.cache import RequestCache

log = logging.getLogger(__name__)

CHAT_URL = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")
RETRYABLE_LINE_CODES = ("batch_expired", "server_error", "rate_limit_exceeded", "timeout", "internal_error")
METADATA_KEY = "activepref_job"


class JudgeFilePending(RunStopped):
    """The run waits for judge results from outside (``mode: file``): ``paths`` are the request
    files to run, e.g. with ``vllm run-batch -i FILE -o RESULTS --model M``, then
    ``activepref judge-file import RUN RESULTS`` and ``activepref resume RUN``."""

    reason = "judge file"

    def __init__(self, paths: Sequence[str], lines: int) -> None:
        self.paths = list(paths)
        self.lines = lines
        super().__init__(
            f"waiting for judge results: {lines} request(s) in {', '.join(self.paths)}; run them (e.g. `vllm run-batch -i "
            f"{self.paths[0]} -o results.jsonl --model MODEL`), then `activepref judge-file import RUN results.jsonl` and "
            "`activepref resume RUN`"
        )


@dataclass(frozen=True)
class BatchOptions:
    """completion_window: the provider's window (OpenAI: "24h"); poll_interval_s: seconds
    between status checks; max_retries: new jobs for failed lines before they count as
    failures; directory: where ``mode: file`` writes its request files."""

    completion_window: str = "24h"
    poll_interval_s: float = 30.0
    max_retries: int = 2
    directory: str | None = None


def parse_result_line(line: dict[str, Any], want_logprobs: bool) -> ChatResult | LineOutcome:
    """One line of a batch output or error file (OpenAI format, also vLLM's) -> the answer, or
    the line's failure. The caller has checked ``custom_id``."""
    key = str(line.get("custom_id"))
    error = line.get("error")
    response = line.get("response")
    if error:
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
        message = str(error.get("message") or code) if isinstance(error, dict) else str(error)
        return LineOutcome(key, "failed", _shorten(f"{code}: {message}" if code else message), code in RETRYABLE_LINE_CODES)
    if not isinstance(response, dict):
        return LineOutcome(key, "failed", "result line without response or error", True)
    status = response.get("status_code")
    body = response.get("body")
    if status != 200:
        reason = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
        retryable = isinstance(status, int) and _retryable_status(status)
        return LineOutcome(key, "failed", _shorten(f"HTTP {status}: {reason}"), retryable)
    try:
        return parse_completion(body, want_logprobs)
    except _Failure as failure:
        return LineOutcome(key, "failed", failure.reason, failure.retryable)


def read_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    """Parse JSONL; a bad line raises ActivePrefError naming ``source``, the line and field."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ActivePrefError(f"{source}:{n}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ActivePrefError(f"{source}:{n}: a JSON object was expected")
        if not isinstance(obj.get("custom_id"), str):
            raise ActivePrefError(f"{source}:{n}: field 'custom_id' is missing or not a string")
        out.append(obj)
    return out


def request_lines(lines: Sequence[BatchLine]) -> str:
    """JSONL of the OpenAI batch input format (one chat-completions request per line)."""
    return "".join(
        json.dumps({"custom_id": line.key, "method": "POST", "url": CHAT_URL, "body": line.body}, sort_keys=True) + "\n"
        for line in lines
    )


class BatchBackend:
    """See the module docstring. ``provider``: ``openai`` or ``file``."""

    def __init__(
        self,
        model: str,
        journal: BatchJournal,
        options: BatchOptions,
        *,
        provider: str = "openai",
        base_url: str | None = None,
        api_key_env: str | None = None,
        endpoint: str | None = None,
        stage: str = "judge",
        timeout_s: float = 120.0,
    ) -> None:
        if provider not in ("openai", "file"):
            raise ValueError(f"batch provider must be openai or file, not {provider!r}")
        self.model = model
        self.journal = journal
        self.options = options
        self.provider = provider
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env or DEFAULT_API_KEY_ENV
        self.endpoint = endpoint or f"{_without_userinfo(self.base_url)}|{model}"
        self.stage = stage
        self.timeout_s = timeout_s
        self.submissions = 0  # batches this object created (tests and summaries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r}, provider={self.provider!r})"

    # ----------------------------------------------------------------- ChatBackend
    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        requests = list(requests)
        if not requests:
            return
        index: dict[str, list[int]] = {}
        bodies: dict[str, dict[str, Any]] = {}
        logprobs: dict[str, bool] = {}
        for i, req in enumerate(requests):
            key = req.cache_key(self.endpoint)
            index.setdefault(key, []).append(i)
            bodies[key] = chat_body(self.model, req)
            logprobs[key] = req.params.top_logprobs > 0

        def report(key: str, result: ChatResult | BackendError) -> None:
            for i in index[key]:
                on_result(i, result)

        latest = self.journal.latest_for(self.endpoint, index)
        to_poll: dict[str, BatchJob] = {}
        fresh: list[str] = []
        for key in index:
            job = latest.get(key)
            if job is not None and job.open:
                to_poll[job.job] = job
                continue
            if job is not None and job.state == FINISHED:
                done = self.journal.outcomes(job.job).get(key)
                if done is not None and done.outcome == "failed":
                    report(key, self._error(done, job.attempt))
                    continue
            fresh.append(key)
        queue = list(to_poll.values())
        if fresh:
            queue.append(self._submit([BatchLine(k, bodies[k]) for k in fresh], attempt=0))
        pending_files: list[BatchJob] = []
        while queue:
            job = queue.pop(0)
            if self.provider == "file" and job.state == WAITING:
                pending_files.append(job)
                continue
            mine = [line.key for line in self.journal.lines(job.job) if line.key in index]
            results = self._collect(job, logprobs)
            ok, failed, retry = [], [], []
            for key in mine:
                res = results.get(key) or LineOutcome(key, "failed", f"no result line (batch {job.status or job.state})", True)
                if isinstance(res, ChatResult):
                    report(key, res)
                    ok.append(key)
                elif res.retryable and job.attempt < self.options.max_retries:
                    retry.append(key)
                else:
                    failed.append(res)
            if retry:
                log.info("%s: %d line(s) of batch %s failed; retrying them as a new job", self.endpoint, len(retry),
                         job.batch_id or job.job)
                queue.append(self._submit([BatchLine(k, bodies[k]) for k in retry], attempt=job.attempt + 1))
            self.journal.finish(job.job, ok, failed, retry)
            for f in failed:
                report(f.key, self._error(f, job.attempt))
        if pending_files:
            raise JudgeFilePending([j.path or j.job for j in pending_files], sum(len(self.journal.lines(j.job)) for j in pending_files))

    def _error(self, failure: LineOutcome, attempt: int) -> BackendError:
        tries = attempt + 1
        err = BackendError(f"{self.endpoint}: batch line failed: {failure.error} ({tries} job{'s' if tries != 1 else ''})")
        err.retryable = failure.retryable  # type: ignore[attr-defined]
        return err

    # ----------------------------------------------------------------- submit
    def _submit(self, lines: list[BatchLine], attempt: int) -> BatchJob:
        if self.provider == "file":
            return self._write_file(lines, attempt)
        job = self.journal.new_job("openai", self.endpoint, self.stage, attempt, lines, SUBMITTING)
        return self._create(job)

    def _write_file(self, lines: list[BatchLine], attempt: int) -> BatchJob:
        directory = Path(self.options.directory or ".").expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        job = self.journal.new_job("file", self.endpoint, self.stage, attempt, lines, SUBMITTING)
        path = directory / f"judge-{job.seq:05d}-{job.job[:8]}.requests.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(request_lines(lines), encoding="utf-8")
        tmp.replace(path)
        self.journal.update(job.job, state=WAITING, path=str(path))
        log.info("%s: wrote %d judge request(s) to %s", self.endpoint, len(lines), path)
        found = self.journal.job(job.job)
        assert found is not None
        return found

    def _client(self) -> openai.OpenAI:
        import openai

        key = os.environ.get(self.api_key_env) or PLACEHOLDER_API_KEY
        return openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=3, timeout=self.timeout_s)

    def _create(self, job: BatchJob) -> BatchJob:
        """Upload the job's lines (once) and create its batch, unless a batch with our job id
        exists already (a process killed after creating it and before journaling its id)."""
        client = self._client()
        key = os.environ.get(self.api_key_env) or ""
        try:
            existing = self._find_batch(client, job.job)
            if existing is not None:
                log.info("%s: found batch %s of job %s at the provider; polling it", self.endpoint, existing.id, job.job)
                self.journal.update(job.job, state=SUBMITTED, batch_id=existing.id, status=existing.status)
            else:
                file_id = job.input_file_id
                if file_id is None:
                    data = request_lines(self.journal.lines(job.job)).encode()
                    uploaded = client.files.create(file=(f"activepref-{job.job}.jsonl", io.BytesIO(data)), purpose="batch")
                    file_id = uploaded.id
                    self.journal.update(job.job, input_file_id=file_id)
                batch = client.batches.create(
                    input_file_id=file_id, endpoint=CHAT_URL, completion_window=self.options.completion_window,  # type: ignore[arg-type]
                    metadata={METADATA_KEY: job.job},
                )
                self.submissions += 1
                self.journal.update(job.job, state=SUBMITTED, batch_id=batch.id, status=batch.status)
                log.info("%s: submitted batch %s (%d line(s), attempt %d)", self.endpoint, batch.id,
                         len(self.journal.lines(job.job)), job.attempt)
        except Exception as exc:
            if isinstance(exc, ActivePrefError):
                raise
            raise BackendError(f"{self.endpoint}: could not submit batch job {job.job}: {_shorten(scrub(str(exc), key))}") from None
        found = self.journal.job(job.job)
        assert found is not None
        return found

    @staticmethod
    def _find_batch(client: openai.OpenAI, job_id: str) -> Any:
        """The provider's batch whose metadata names our job (None if there is none)."""
        for batch in client.batches.list(limit=100):
            if (batch.metadata or {}).get(METADATA_KEY) == job_id:
                return batch
        return None

    # ----------------------------------------------------------------- collect
    def _collect(self, job: BatchJob, logprobs: dict[str, bool]) -> dict[str, ChatResult | LineOutcome]:
        if self.provider == "file":
            return self._collect_imported(job)
        if job.state == SUBMITTING:
            job = self._create(job)
        return self._poll(job, logprobs)

    def _collect_imported(self, job: BatchJob) -> dict[str, ChatResult | LineOutcome]:
        """An imported file job: its good answers are in the request cache (so they never reach
        this backend); what is left are its failed or missing lines."""
        assert job.state == IMPORTED
        return {k: o for k, o in self.journal.outcomes(job.job).items() if o.outcome != "ok"}

    def _poll(self, job: BatchJob, logprobs: dict[str, bool]) -> dict[str, ChatResult | LineOutcome]:
        client = self._client()
        key = os.environ.get(self.api_key_env) or ""
        started = time.monotonic()
        last_status = None
        while True:
            try:
                batch = client.batches.retrieve(job.batch_id)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - the client retried already; keep polling, the job is safe
                log.warning("%s: polling batch %s failed (%s); trying again", self.endpoint, job.batch_id,
                            _shorten(scrub(str(exc), key)))
                time.sleep(self.options.poll_interval_s)
                continue
            counts = batch.request_counts
            if batch.status != last_status or batch.status not in TERMINAL:
                done = f", {counts.completed}/{counts.total} done, {counts.failed} failed" if counts else ""
                log.info("%s: batch %s %s%s (%.0f s)", self.endpoint, batch.id, batch.status, done, time.monotonic() - started)
            if batch.status != last_status:
                self.journal.update(job.job, status=batch.status)
                last_status = batch.status
            if batch.status in TERMINAL:
                break
            time.sleep(self.options.poll_interval_s)
        out: dict[str, ChatResult | LineOutcome] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = client.files.content(file_id).text
            for line in read_jsonl(text, f"batch {batch.id} file {file_id}"):
                k = line["custom_id"]
                out[k] = parse_result_line(line, logprobs.get(k, False))
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            reason = "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "the provider failed the batch"
            for line in self.journal.lines(job.job):
                out.setdefault(line.key, LineOutcome(line.key, "failed", _shorten(f"batch failed: {reason}"), False))
        return out


def make_batch_backend(config: JudgeConfig, cache: RequestCache, run_dir: Path | None = None) -> BatchBackend:
    """The batch backend of a judge config with ``mode: batch`` or ``mode: file`` (journal in
    the request cache's file; file-mode requests under ``batch.directory`` or RUN/judge-files)."""
    model = config.require_model()
    b = config.batch
    directory = b.directory or (str(run_dir / "judge-files") if run_dir is not None else None)
    options = BatchOptions(b.completion_window, b.poll_interval_s, b.max_retries, directory)
    return BatchBackend(
        model.model, BatchJournal(cache.path), options, provider="openai" if config.mode == "batch" else "file",
        base_url=model.base_url, api_key_env=model.api_key_env, endpoint=model.cache_id, timeout_s=model.timeout_s,
    )
