#!/usr/bin/env python
"""Throughput of the ``openai`` backend against a raw HTTP flood of the same server.

What is measured: a fake OpenAI-compatible server (``tests/servers/fake_openai.py``, run as a
separate process so that it does not share the client's GIL) answers every chat request after a
fixed latency (default 50 ms) with a limited number of slots (default 8; further requests wait),
so no client can exceed ``slots / latency`` requests per second (the "ceiling", 160/s by default).

(a) pipeline: ``OpenAICompatBackend.complete`` (``max_concurrency`` = slots, retries on but
    unused) over N generation requests (max_tokens=64, temperature 0.7, a seed each), then over
    N Likert-style judge requests (max_tokens=1, temperature 0, top_logprobs=20): the two phases
    a pipeline runs, with the barrier between them. Every result is parsed into a ``ChatResult``.
(b) flood: the same 2N request bodies posted with a bare ``httpx2.AsyncClient`` (the HTTP
    library of openai 3.x; ``httpx`` if that is missing; ``client.post(url, json=body)``) with
    the same concurrency, reading the response bytes only: no retries, no response parsing, no
    phase barrier.

Each figure is the median over ``--repeats`` rounds; a round runs (a) and (b) back to back, the
order alternating between rounds. One untimed warm-up round of a few requests precedes them.
Goal (reported, not asserted): pipeline_rps / flood_rps >= 0.95.

Output: a table, then as the last stdout line one JSON object
``{"pipeline_rps": ..., "flood_rps": ..., "ratio": ...}``.
``--quick``: N = 64, three rounds (a smoke run of about 6 s; with so few requests the fixed
cost of each ``complete`` call weighs more, so its ratio reads a few points lower).

    python benchmarks/client_throughput.py [--quick] [-n N] [--repeats R] [--latency S] [--slots K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from activepref.backends.base import BackendError, ChatRequest, SamplingParams  # noqa: E402
from activepref.backends.openai_compat import OpenAICompatBackend  # noqa: E402

try:
    import httpx2 as httpx  # what openai>=3 uses underneath
except ImportError:  # pragma: no cover - openai 1.x/2.x environments
    import httpx  # type: ignore[no-redef]

GOAL = 0.95
MODEL = "fake-model"
JUDGE_SYSTEM = "You are a strict judge. Rate the answer from 1 (bad) to 5 (excellent). Reply with one digit."


def make_requests(n: int) -> tuple[list[ChatRequest], list[ChatRequest]]:
    gen = [
        ChatRequest.from_messages(
            [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": f"Question {i}: explain topic number {i} in a short paragraph."}],
            SamplingParams(temperature=0.7, max_tokens=64, seed=i),
        )
        for i in range(n)
    ]
    judge = [
        ChatRequest.from_messages(
            [{"role": "system", "content": JUDGE_SYSTEM},
             {"role": "user", "content": f"Question {i}: explain topic number {i}.\nAnswer: Fake answer {i}.\nScore:"}],
            SamplingParams(temperature=0.0, max_tokens=1, top_logprobs=20),
        )
        for i in range(n)
    ]
    return gen, judge


def start_server(latency: float, slots: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "servers" / "fake_openai.py"),
         "--latency", str(latency), "--slots", str(slots), "--no-record"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise SystemExit("fake server did not start")
    return proc, json.loads(line)["base_url"]


def run_pipeline(backend: OpenAICompatBackend, gen: list[ChatRequest], judge: list[ChatRequest]) -> dict:
    errors: list[BackendError] = []
    counts = [0]

    def on_result(i: int, r: object) -> None:
        counts[0] += 1
        if isinstance(r, BackendError):
            errors.append(r)

    t0 = time.perf_counter()
    backend.complete(gen, on_result)
    t1 = time.perf_counter()
    backend.complete(judge, on_result)
    t2 = time.perf_counter()
    if counts[0] != len(gen) + len(judge):
        raise SystemExit(f"pipeline reported {counts[0]} results for {len(gen) + len(judge)} requests")
    return {"gen_s": t1 - t0, "judge_s": t2 - t1, "total_s": t2 - t0, "errors": len(errors),
            "first_error": str(errors[0]) if errors else ""}


def request_body(r: ChatRequest) -> dict:
    p = r.params
    body: dict = {"model": MODEL, "messages": r.message_dicts(), "temperature": p.temperature, "top_p": p.top_p,
                  "max_tokens": p.max_tokens}
    if p.seed is not None:
        body["seed"] = p.seed
    if p.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = p.top_logprobs
    return body


async def _flood(base_url: str, bodies: list[dict], concurrency: int) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    failures = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:

        async def one(body: dict) -> None:
            nonlocal failures
            async with sem:
                resp = await client.post("/chat/completions", json=body, headers={"Authorization": "Bearer EMPTY"})
                await resp.aread()
                failures += resp.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - t0, failures


def run_flood(base_url: str, bodies: list[dict], concurrency: int) -> dict:
    seconds, failures = asyncio.run(_flood(base_url, bodies, concurrency))
    return {"total_s": seconds, "errors": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=64, three rounds")
    ap.add_argument("-n", type=int, default=400, help="generation requests (and as many judge requests)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    ap.add_argument("--slots", type=int, default=8, help="server slots = client max_concurrency")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 64, 3

    gen, judge = make_requests(args.n)
    bodies = [request_body(r) for r in gen + judge]
    total = len(bodies)
    ceiling = args.slots / args.latency if args.latency > 0 else float("inf")

    proc, base_url = start_server(args.latency, args.slots)
    try:
        backend = OpenAICompatBackend(MODEL, base_url, max_concurrency=args.slots, timeout_s=30.0, max_retries=4)
        warm_gen, warm_judge = make_requests(args.slots)
        run_pipeline(backend, warm_gen, warm_judge)
        run_flood(base_url, [request_body(r) for r in warm_gen], args.slots)

        pipes, floods = [], []
        for rnd in range(args.repeats):
            if rnd % 2 == 0:
                pipes.append(run_pipeline(backend, gen, judge))
                floods.append(run_flood(base_url, bodies, args.slots))
            else:
                floods.append(run_flood(base_url, bodies, args.slots))
                pipes.append(run_pipeline(backend, gen, judge))
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

    gen_s = statistics.median(p["gen_s"] for p in pipes)
    judge_s = statistics.median(p["judge_s"] for p in pipes)
    pipe_s = statistics.median(p["total_s"] for p in pipes)
    flood_s = statistics.median(f["total_s"] for f in floods)
    pipeline_rps = total / pipe_s
    flood_rps = total / flood_s
    ratio = pipeline_rps / flood_rps

    print(f"fake server: latency {args.latency * 1000:.0f} ms, {args.slots} slots (ceiling {ceiling:.1f} req/s); "
          f"client concurrency {args.slots}; N = {args.n} generation + {args.n} judge requests; "
          f"median of {args.repeats} round(s)")
    header = f"{'what':<28}{'requests':>10}{'seconds':>10}{'req/s':>10}{'% ceiling':>11}{'errors':>8}"
    print(header)
    print("-" * len(header))
    rows = [
        ("pipeline: generation", args.n, gen_s, sum(p["errors"] for p in pipes)),
        ("pipeline: judge (top-20)", args.n, judge_s, None),
        ("pipeline: total", total, pipe_s, sum(p["errors"] for p in pipes)),
        ("raw flood (httpx)", total, flood_s, sum(f["errors"] for f in floods)),
    ]
    for name, n, secs, errs in rows:
        print(f"{name:<28}{n:>10}{secs:>10.3f}{n / secs:>10.1f}{100 * n / secs / ceiling:>10.1f}%"
              f"{'' if errs is None else errs:>8}")
    print(f"ratio pipeline/flood = {ratio:.3f} (goal >= {GOAL}: {'pass' if ratio >= GOAL else 'FAIL'})")
    if any(p["errors"] for p in pipes):
        print(f"first pipeline error: {next(p['first_error'] for p in pipes if p['errors'])}")
    print(json.dumps({"pipeline_rps": round(pipeline_rps, 2), "flood_rps": round(flood_rps, 2),
                      "ratio": round(ratio, 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
