"""Load on the annotation app: simulated annotators labelling concurrently over HTTP.

Builds a run whose human judge waits for ``--pairs`` pairs (a synthetic pool, one pair per
prompt, ``run --no-wait``), registers ``--annotators`` people, serves the app as a user does
(``activepref annotate RUN`` in its own process), and lets every annotator loop "load the page,
read the form, submit a label" with its own HTTP client (httpx, all concurrent in one event
loop) until the queue is empty. Then it checks the store: every pair has exactly its label(s),
no annotator labelled a pair twice, and the run's loop resumes on them to a trained iteration.

Prints labels/s, p50/p99 latency of the submit (POST) and of the page (GET), the p99 against
the 100 ms target, and ends with one JSON line.

    python benchmarks/annotate_load.py --annotators 20 --pairs 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import httpx2 as httpx  # what the openai client ships with here
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

TARGET_P99_MS = 100.0
FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


def build_run(tmp: Path, pairs: int) -> Path:
    from activepref.config import load_config
    from activepref.core import runs
    from activepref.judges.human import AwaitingLabels
    from activepref.pools.sources import synthetic_pool, write_pool

    n_prompts = int(pairs / 0.9) + 8  # eval_fraction 0.1 keeps a tenth back
    pool = write_pool(synthetic_pool(n_prompts=n_prompts, candidates=4, dim=16, seed=0), tmp / "pool.parquet")
    config = load_config(overrides={
        "pool": str(pool), "method": "random", "batch_size": pairs, "iterations": 1, "eval_fraction": 0.1,
        "judge": {"kind": "human", "options": {"labels_per_pair": 1}},
    })
    try:
        runs.run(config, tmp / "run", wait_for_labels=False)
    except AwaitingLabels:
        pass
    return tmp / "run"


def start_app(run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "activepref", "annotate", str(run_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 401:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the app did not start")


async def annotator(url: str, token: str, submits: list[float], pages: list[float], outcomes: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.get(f"/?token={token}")  # the personal link: sets the cookie
        while True:
            start = time.perf_counter()
            page = await client.get("/")
            pages.append(time.perf_counter() - start)
            fields = dict(FIELD.findall(page.text))
            if "task_id" not in fields:
                return  # nothing left for this annotator
            choice = ("a", "b", "tie")[int(fields["task_id"]) % 3]
            start = time.perf_counter()
            res = await client.post("/label", data={**fields, "choice": choice})
            submits.append(time.perf_counter() - start)
            status = res.headers.get("location", "").partition("last=")[2] or str(res.status_code)
            outcomes[status] = outcomes.get(status, 0) + 1


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--keep", type=Path, default=None, help="build the run here and keep it (default: a temporary dir)")
    parser.add_argument("--quick", action="store_true", help="4 annotators, 40 pairs (a smoke test of the script)")
    args = parser.parse_args()
    if args.quick:
        args.annotators, args.pairs = 4, 40
    if args.port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="annotate-load-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_dir = build_run(tmp, args.pairs)
    print(f"run with {args.pairs} pairs awaiting labels built in {time.perf_counter() - t0:.1f} s: {run_dir}", flush=True)

    from activepref.annotate.queue import AnnotationQueue

    queue = AnnotationQueue.open(run_dir)
    tokens = [queue.add_annotator(f"annotator{k:02d}") for k in range(args.annotators)]
    tasks = queue.conn.execute("SELECT COUNT(*) FROM annotation_tasks").fetchone()[0]
    queue.close()
    assert tasks == args.pairs, f"{tasks} tasks, wanted {args.pairs}"

    proc = start_app(run_dir, args.port)
    submits: list[float] = []
    pages: list[float] = []
    outcomes: dict[str, int] = {}
    try:
        url = f"http://127.0.0.1:{args.port}"

        async def everyone() -> None:
            await asyncio.gather(*(annotator(url, t, submits, pages, outcomes) for t in tokens))

        start = time.perf_counter()
        asyncio.run(everyone())
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    conn = sqlite3.connect(run_dir / "run.sqlite")
    per_task = conn.execute(
        "SELECT t.task_id, COUNT(l.annotator) FROM annotation_tasks t LEFT JOIN annotation_labels l USING (task_id) GROUP BY t.task_id"
    ).fetchall()
    labels = conn.execute("SELECT COUNT(*) FROM annotation_labels").fetchone()[0]
    distinct = conn.execute("SELECT COUNT(DISTINCT task_id || '/' || annotator) FROM annotation_labels").fetchone()[0]
    states = dict(conn.execute("SELECT state, COUNT(*) FROM annotation_tasks GROUP BY state").fetchall())
    conn.close()
    exactly_once = all(n == 1 for _, n in per_task) and labels == distinct == args.pairs

    from activepref.core import runs

    t1 = time.perf_counter()
    runs.resume(run_dir, wait_for_labels=False)
    st = runs.status(run_dir)
    resumed = st.iterations_done == 1 and st.pairs > 0
    print(f"the run resumed on the labels: iteration trained in {time.perf_counter() - t1:.1f} s, {st.pairs} preference pairs")

    result = {
        "annotators": args.annotators,
        "pairs": args.pairs,
        "labels": labels,
        "wall_s": round(wall, 3),
        "labels_per_s": round(labels / wall, 1),
        "submit_p50_ms": round(percentile_ms(submits, 50), 2),
        "submit_p99_ms": round(percentile_ms(submits, 99), 2),
        "page_p50_ms": round(percentile_ms(pages, 50), 2),
        "page_p99_ms": round(percentile_ms(pages, 99), 2),
        "submit_outcomes": outcomes,
        "task_states": states,
        "every_label_exactly_once": exactly_once,
        "run_resumed_on_labels": resumed,
        "target_p99_ms": TARGET_P99_MS,
        "p99_over_target": round(percentile_ms(submits, 99) / TARGET_P99_MS, 3),
        "cpus": os.cpu_count(),
    }
    print(f"{labels} labels by {args.annotators} annotators in {wall:.2f} s: {result['labels_per_s']} labels/s")
    print(f"submit latency p50 {result['submit_p50_ms']} ms, p99 {result['submit_p99_ms']} ms "
          f"({result['p99_over_target']}x the {TARGET_P99_MS:.0f} ms target); page p50 {result['page_p50_ms']} ms, "
          f"p99 {result['page_p99_ms']} ms")
    print(f"every label landed exactly once: {exactly_once}; submit outcomes {outcomes}")
    print(json.dumps(result))
    if not exactly_once:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
