"""Offline judging through files (``judge: {mode: file}``; ``activepref judge-file``).

A run in file mode stops at its first judge step with the step's requests written as JSONL in
the OpenAI batch input format (``custom_id``, ``method``, ``url``, ``body``), which ``vllm
run-batch`` reads. :func:`export_requests` writes every waiting request again, to one file;
:func:`import_results` reads a results file in the OpenAI batch output format (what ``vllm
run-batch`` and the Batch API write) into the request cache, so that ``activepref resume``
finds each answer there and makes no call. Lines that failed are noted in the batch journal;
on resume they go out again as a new request file (``judge.batch.max_retries`` times), then
count as judge failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from activepref.backends.base import ChatResult
from activepref.backends.openai_batch import parse_result_line, read_jsonl, request_lines
from activepref.core.batch_journal import IMPORTED, WAITING, BatchJournal, LineOutcome
from activepref.core.cache import RequestCache
from activepref.errors import ActivePrefError


@dataclass
class ImportReport:
    """answered: lines now in the request cache; failed: lines with an error (retried or
    recorded as failures on resume); unknown: custom_ids no waiting request has; jobs: the
    request files the results belong to."""

    answered: int = 0
    failed: int = 0
    unknown: int = 0
    already: int = 0
    jobs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def waiting_lines(journal: BatchJournal) -> tuple[list[str], str]:
    """(request files of the waiting jobs, their lines as one JSONL text)."""
    jobs = journal.jobs(WAITING)
    text = "".join(request_lines(journal.lines(j.job)) for j in jobs)
    return [j.path or j.job for j in jobs], text


def export_requests(journal: BatchJournal, dest: Path) -> int:
    """Write every waiting judge request to ``dest``; the number of lines."""
    _, text = waiting_lines(journal)
    if not text:
        raise ActivePrefError("no judge requests are waiting (is the run in `judge: {mode: file}` and stopped at a judge step?)")
    dest.write_text(text, encoding="utf-8")
    return text.count("\n")


def import_results(journal: BatchJournal, cache: RequestCache, source: Path) -> ImportReport:
    """Read a batch results file into the request cache (each answer committed) and the journal.
    The whole file is parsed first: a malformed line raises, naming the file and line, before
    anything is written."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ActivePrefError(f"{source}: cannot read ({exc.strerror or exc})") from None
    lines = read_jsonl(text, str(source))
    report = ImportReport()
    per_job: dict[str, tuple[list[str], list[LineOutcome]]] = {}
    for line in lines:
        key = line["custom_id"]
        jobs = [j for j in journal.job_of_line(key) if j.state in (WAITING, IMPORTED) and j.provider == "file"]
        if not jobs:
            report.unknown += 1
            continue
        job = jobs[-1]
        body = next(b.body for b in journal.lines(job.job) if b.key == key)
        result = parse_result_line(line, bool(body.get("logprobs")))
        ok, failed = per_job.setdefault(job.job, ([], []))
        if isinstance(result, ChatResult):
            if cache.get(key) is not None:
                report.already += 1
            else:
                cache.put(key, job.endpoint, job.stage, result)
                report.answered += 1
            ok.append(key)
        else:
            failed.append(result)
            report.failed += 1
            if len(report.errors) < 5:
                report.errors.append(f"{key[:12]}: {result.error}")
    for job_id, (ok, failed) in per_job.items():
        journal.record_import(job_id, failed, ok)
        report.jobs.append(job_id)
    return report
