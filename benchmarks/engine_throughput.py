#!/usr/bin/env python
"""Request throughput of a run's model calls under each execution engine.

The fake OpenAI-compatible server (``tests/servers/fake_openai.py``, its own process) answers
each chat request after a fixed latency (default 100 ms) with ``2 x concurrency`` slots, so
the server is never the bottleneck for two workers. The workload is what one iteration of a
live run sends: N generation requests, then (a barrier) N Likert-judge requests (one token,
top-20 log-probabilities). Every mode goes through the request cache (a fresh SQLite file per
round), so each answer is committed as it arrives, as in a run.

Modes, each as ``requests / wall seconds`` (median over ``--repeats`` rounds, modes in rotating
order within a round; one untimed warm-up round first, which also starts the Ray actors):

- ``local``: the engine ``local`` backend (``max_concurrency`` = C, in this process);
- ``ray_1`` / ``ray_2``: the ``ray`` engine with 1 or 2 replicas (Ray actors), C in flight each;
- ``flood_C`` / ``flood_2C``: the same 2N request bodies posted by a bare async HTTP client with
  C or 2C in flight, reading only the response bytes: no parsing, no cache, no Ray.

Overlap (``--overlap-prompts``, default 48; 0 skips it): one live run (2 models x 2 samples,
batch 16, MiniLM embedder, Likert judge, a 1,500-step ENN: training about as long as an
iteration's generation) on the ``ray`` engine with and without
``prefetch``: wall seconds of each, and how much of the next iteration's generation and
embedding ran while the ENN trained (``timings.json``: ``prefetch`` minus ``prefetch_wait``).

Targets (issue 15): ray_2 / ray_1 >= 1.8 and ray_2 / flood_2C >= 0.9. The Ray cluster is a
local one this script starts (``ray.init``) unless ``RAY_ADDRESS`` names one. Ends with one
JSON line: ``local_rps, ray1_rps, ray2_rps, flood_c_rps, flood_2c_rps, ray2_over_ray1,
ray2_over_flood, ray1_over_flood, local_over_flood, targets_met`` and, with the overlap runs,
``overlap_wall_s_off, overlap_wall_s_on, overlap_hidden_s``.

    python benchmarks/engine_throughput.py [--quick] [-n N] [--concurrency C] [--latency S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client_throughput import make_requests, request_body, run_flood, start_server  # noqa: E402

from activepref.backends.base import BackendError, ChatRequest  # noqa: E402
from activepref.config import EngineConfig, ModelConfig  # noqa: E402
from activepref.core.cache import CachedBackend, RequestCache  # noqa: E402
from activepref.engines import make_engine  # noqa: E402

TARGET_SCALING, TARGET_FLOOD = 1.8, 0.9


def run_engine(backend, gen: list[ChatRequest], judge: list[ChatRequest], cache_dir: Path) -> dict:
    """Generation then judging through a fresh request cache; wall seconds and errors."""
    cache = RequestCache(cache_dir / f"cache-{time.perf_counter_ns()}.sqlite")
    errors, count = [], [0]

    def on_result(i: int, r: object) -> None:
        count[0] += 1
        if isinstance(r, BackendError):
            errors.append(str(r))

    t0 = time.perf_counter()
    CachedBackend(backend, cache, "generation").complete(gen, on_result)
    CachedBackend(backend, cache, "judge").complete(judge, on_result)
    seconds = time.perf_counter() - t0
    cache.close()
    if count[0] != len(gen) + len(judge):
        raise SystemExit(f"{count[0]} results for {len(gen) + len(judge)} requests")
    return {"total_s": seconds, "errors": len(errors), "first_error": errors[0] if errors else ""}


def overlap_runs(n_prompts: int, latency: float, concurrency: int, workdir: Path) -> dict:
    """A live run on the ray engine with prefetch off, then on (fresh caches): wall seconds and
    the seconds of prefetch work that ran during training."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from servers.fake_openai import FakeOpenAIServer
    from test_live_server import LiveScript, write_prompts

    from activepref.config import RunConfig
    from activepref.core import runs
    from activepref.core.timings import read_timings

    out: dict[str, float] = {}
    with FakeOpenAIServer(LiveScript(), latency_s=latency, slots=4 * concurrency) as srv:
        prompts = write_prompts(workdir / "prompts.jsonl", [f"Question {i}: explain idea {i} to a student." for i in range(n_prompts)])
        model = {"backend": "openai", "base_url": srv.base_url, "api_key_env": "AP_BENCH_KEY", "max_concurrency": concurrency}
        for prefetch in (False, True):
            cfg = RunConfig.model_validate({
                "prompts": str(prompts), "method": "dts", "batch_size": 16, "seed": 0,
                "generation": {"models": [{"name": m, "model": m, **model} for m in ("gen-a", "gen-b")],
                               "samples_per_model": 2, "max_tokens": 48},
                "embedding": {"backend": "sentence_transformers", "model": "builtin"},
                "judge": {"kind": "likert", "model": {"model": "judge-m", **model}},
                "cache_path": str(workdir / f"cache-{prefetch}.sqlite"),
                "enn": {"heads": 8, "hidden": 64, "steps": 1500},
                "engine": {"kind": "ray", "options": {"prefetch": prefetch}},
            })
            run_dir = workdir / f"run-prefetch-{prefetch}"
            t0 = time.perf_counter()
            runs.run(cfg, run_dir)
            wall = time.perf_counter() - t0
            timings = read_timings(run_dir)
            key = "on" if prefetch else "off"
            out[f"overlap_wall_s_{key}"] = round(wall, 2)
            if prefetch:
                out["overlap_hidden_s"] = round(timings.get("prefetch", 0.0) - timings.get("prefetch_wait", 0.0), 2)
                out["overlap_prefetch_s"] = round(timings.get("prefetch", 0.0), 2)
            print(f"live run, prefetch {key}: {wall:.1f} s wall; train {timings.get('enn_fit', 0):.1f} s, "
                  f"prefetch {timings.get('prefetch', 0):.1f} s, waited {timings.get('prefetch_wait', 0):.1f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=240, help="generation requests (and as many judge requests) per round")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per worker (C)")
    ap.add_argument("--latency", type=float, default=0.1, help="server seconds per request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overlap-prompts", type=int, default=48, help="prompts of the prefetch on/off live runs (0: skip them)")
    ap.add_argument("--quick", action="store_true", help="n=48, 1 round, 32-prompt overlap runs: does it work")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 48, 1
        args.overlap_prompts = min(args.overlap_prompts, 32)
    c = args.concurrency
    os.environ.setdefault("AP_BENCH_KEY", "EMPTY")
    server, base_url = start_server(args.latency, 2 * c)
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        model = ModelConfig(backend="openai", model="fake", base_url=base_url, api_key_env="AP_BENCH_KEY", max_concurrency=c)
        t0 = time.perf_counter()
        backends = {
            "local": make_engine(EngineConfig(kind="local")).chat_backend(model),
            "ray_1": make_engine(EngineConfig(kind="ray", options={"actors": {"replicas": 1}})).chat_backend(model),
            "ray_2": make_engine(EngineConfig(kind="ray", options={"actors": {"replicas": 2}})).chat_backend(model),
        }
        actors_s = time.perf_counter() - t0
        gen, judge = make_requests(args.n)
        bodies = [request_body(r) for r in gen + judge]
        total = len(bodies)
        times: dict[str, list[float]] = {m: [] for m in ("local", "ray_1", "ray_2", "flood_C", "flood_2C")}
        errors = 0
        with tempfile.TemporaryDirectory() as tmp:
            warm_g, warm_j = make_requests(8)
            for b in backends.values():
                run_engine(b, warm_g, warm_j, Path(tmp))
            run_flood(base_url, [request_body(r) for r in warm_g], c)
            modes = list(times)
            for r in range(args.repeats):
                order = modes[r % len(modes):] + modes[: r % len(modes)]
                for mode in order:
                    if mode.startswith("flood"):
                        out = run_flood(base_url, bodies, c if mode == "flood_C" else 2 * c)
                    else:
                        out = run_engine(backends[mode], gen, judge, Path(tmp))
                    times[mode].append(out["total_s"])
                    errors += out["errors"]
                    print(f"round {r + 1}/{args.repeats} {mode}: {total / out['total_s']:.1f} requests/s", flush=True)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)
    rps = {m: total / statistics.median(v) for m, v in times.items()}
    ceiling_c, ceiling_2c = c / args.latency, 2 * c / args.latency
    print(f"\n{total} requests per round (generation then judge), latency {args.latency}s, C={c}, server slots {2 * c}; "
          f"Ray actors started in {actors_s:.1f}s; errors {errors}")
    print(f"{'mode':<10} {'req/s':>8} {'ceiling':>8}")
    for m in times:
        ceiling = ceiling_2c if m in ("ray_2", "flood_2C") else ceiling_c
        print(f"{m:<10} {rps[m]:>8.1f} {ceiling:>8.0f}")
    result = {
        "local_rps": round(rps["local"], 2), "ray1_rps": round(rps["ray_1"], 2), "ray2_rps": round(rps["ray_2"], 2),
        "flood_c_rps": round(rps["flood_C"], 2), "flood_2c_rps": round(rps["flood_2C"], 2),
        "ray2_over_ray1": round(rps["ray_2"] / rps["ray_1"], 3),
        "ray2_over_flood": round(rps["ray_2"] / rps["flood_2C"], 3),
        "ray1_over_flood": round(rps["ray_1"] / rps["flood_C"], 3),
        "local_over_flood": round(rps["local"] / rps["flood_C"], 3),
        "errors": errors, "n": total, "latency_s": args.latency, "concurrency": c,
    }
    result["targets_met"] = result["ray2_over_ray1"] >= TARGET_SCALING and result["ray2_over_flood"] >= TARGET_FLOOD
    if args.overlap_prompts:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(overlap_runs(args.overlap_prompts, args.latency, c, Path(tmp)))
    print(f"ray_2/ray_1 = {result['ray2_over_ray1']:.2f} (target >= {TARGET_SCALING}); "
          f"ray_2/flood_2C = {result['ray2_over_flood']:.2f} (target >= {TARGET_FLOOD})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
