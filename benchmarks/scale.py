#!/usr/bin/env python
"""Memory and per-iteration time of a run as the pool grows to the paper's size.

For each pool size (default 6,000 and 60,000 prompts) x 30 candidates at d = ``--dim``
(2,560, the 001 backbone's width), the script writes a pool once in seed 001's regime
(``make-pool --regime auf``: Parquet + a float16 ``.npy`` of features, chunk by chunk; the
60,000 pool's features are 9.2 GB on disk and never in memory), then runs ``--iterations`` iterations of ``--method`` on it
in a fresh child process and reports

* ``anon_gb``: the child's peak anonymous memory (RssAnon sampled every 50 ms), and its peak
  by stage (after setup, after each iteration): what the run itself holds;
* ``rss_gb``: the child's peak resident memory (``VmHWM``: pool import, run creation and
  every iteration included);
* ``setup_s``: reading and checking the pool (one streaming pass over the features) and
  creating the run store;
* ``iter_s``: median wall seconds of an iteration after the first; ``iter_growth``: the last
  iteration over the second (1.0 = no growth with the iterations done);
* the iteration's split from the loop's own timings: ENN (training, prediction on the batch,
  the held-out monitor), acquisition, store (replay judge, commits, checkpoint), other.

Targets (issue 15): peak RSS <= 4 GB at 60,000 prompts; per-iteration time at 60,000 within
1.2x of 6,000; the non-ENN share of an iteration <= 15 %. Ends with one JSON line:
``rss_gb_6k, rss_gb_60k, iter_s_6k, iter_s_60k, non_enn_share`` (taken from the largest
pool) and more.

    python benchmarks/scale.py                               # 6k and 60k, ~15 GB of disk
    python benchmarks/scale.py --sizes 600 6000 --iterations 3   # a quicker look
    python benchmarks/scale.py --quick --workdir /tmp/scale       # seconds: does it work
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ENN_STAGES = ("enn_fit", "enn_predict", "evaluate")
STORE_STAGES = ("annotate", "store", "checkpoint")
TARGET_RSS_GB, TARGET_GROWTH, TARGET_NON_ENN = 4.0, 1.2, 0.15
CANDIDATES = 30  # one per model of 001's pool (activepref.pools.auf)


def write_pool(folder: Path, n_prompts: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """A pool in seed 001's regime (``make-pool --regime auf``: 30 candidates per prompt),
    features in a float16 .npy, written chunk by chunk; kept in ``folder`` and reused."""
    from activepref.pools.auf import AUFRegime, write_auf_pool

    folder.mkdir(parents=True, exist_ok=True)
    pool, feats, done = folder / "pool.parquet", folder / "features.npy", folder / "done.json"
    spec = {"n_prompts": n_prompts, "dim": dim, "seed": seed, "regime": "auf"}
    if done.exists() and json.loads(done.read_text()) == spec:
        return pool, feats
    write_auf_pool(AUFRegime(n_prompts=n_prompts, dim=dim, seed=seed), pool, features_file=feats, features_dtype="float16")
    done.write_text(json.dumps(spec))
    return pool, feats


class MemorySampler:
    """Peak anonymous memory of this process (``RssAnon`` of /proc/self/status, sampled every
    50 ms in a thread): the memory the run owns. ``ru_maxrss`` also counts the file-backed pages
    of the memory-mapped features that an iteration touched, which the kernel reclaims under
    pressure."""

    def __init__(self) -> None:
        import threading

        self.peak_anon_kb = 0
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def status_kb(field: str) -> int:
        """A kB field of /proc/self/status (0 where there is none)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    @classmethod
    def anon_kb(cls) -> int:
        return cls.status_kb("RssAnon")

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_anon_kb = max(self.peak_anon_kb, self.anon_kb())

    def mark(self, name: str) -> None:
        self.marks[name] = round(max(self.peak_anon_kb, self.anon_kb()) * 1024 / 1e9, 3)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, self.anon_kb())
        return self.peak_anon_kb * 1024 / 1e9


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process, so its peak RSS is its own)."""
    from activepref.config import load_config
    from activepref.core.loop import execute
    from activepref.core.runs import create_run
    from activepref.core.timings import read_timings
    from activepref.core.wiring import Progress
    from activepref.model.numerics import flush_denormals_in_every_thread

    flush_denormals_in_every_thread()
    sampler = MemorySampler()
    config = load_config(None, {"pool": args.pool, "features": args.features, "method": args.method, "iterations": args.iterations,
                                "batch_size": args.batch_size, "eval_fraction": 0.05, "seed": 0})
    t0 = time.perf_counter()
    store = create_run(config, args.run_dir)
    setup = time.perf_counter() - t0
    sampler.mark("setup")
    marks: list[float] = []
    started = time.perf_counter()

    def on_iteration(it: int, total: int, metrics: Any) -> None:
        marks.append(time.perf_counter())
        sampler.mark(f"iteration {it}")

    try:
        execute(store, config, Progress(on_iteration=on_iteration))
    finally:
        store.close()
    walls = np.diff([started, *marks]).tolist()
    timings = read_timings(args.run_dir)
    # VmHWM: this process's own peak. (ru_maxrss would also carry the parent's peak across the
    # fork/exec that started this child: 9 GB when the parent had just written the pool.)
    rss_gb = MemorySampler.status_kb("VmHWM") * 1024 / 1e9 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    anon_gb = sampler.stop()
    print(json.dumps({"setup_s": setup, "iteration_walls": walls, "timings": timings, "rss_gb": rss_gb, "anon_gb": anon_gb,
                      "anon_peak_by_stage": sampler.marks}))


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.workdir) / f"auf-{size}-d{args.dim}"
    t = time.perf_counter()
    pool, feats = write_pool(folder, size, args.dim)
    made = time.perf_counter() - t
    run_dir = folder / f"run-{args.method}-{os.getpid()}"
    cmd = [sys.executable, __file__, "--child", "--pool", str(pool), "--features", str(feats), "--run-dir", str(run_dir),
           "--method", args.method, "--iterations", str(args.iterations), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the run on {size} prompts failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not args.keep:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    walls = result["iteration_walls"]
    steady = walls[1:] or walls
    loop_total = sum(walls)
    tm = result["timings"]
    enn = sum(tm.get(k, 0.0) for k in ENN_STAGES)
    acquisition = tm.get("acquire", 0.0)  # the method's choice alone (the rest of "select": building inputs, commit)
    store = sum(tm.get(k, 0.0) for k in STORE_STAGES)
    other = max(loop_total - enn - acquisition - store, 0.0)
    return {
        "prompts": size, "rows": size * CANDIDATES, "pool_write_s": round(made, 1), "setup_s": round(result["setup_s"], 1),
        "rss_gb": round(result["rss_gb"], 3), "anon_gb": round(result["anon_gb"], 3),
        "anon_peak_by_stage": result["anon_peak_by_stage"], "iter_s": round(float(np.median(steady)), 3),
        "iter_growth": round(walls[-1] / walls[1], 3) if len(walls) > 2 else None,
        "split_share": {name: round(v / loop_total, 4) for name, v in
                        (("enn", enn), ("acquisition", acquisition), ("store", store), ("other", other))},
        "non_enn_share": round(1.0 - enn / loop_total, 4),
        "iteration_walls": [round(w, 3) for w in walls],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[6000, 60000], help="pool sizes in prompts (smallest first)")
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per iteration (001: 64)")
    ap.add_argument("--method", default="dts")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parents[1] / ".cache-local" / "scale"),
                    help="where the pools are written (kept and reused) and the runs go")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--quick", action="store_true", help="a check that it works: 60 and 600 prompts, d 32, 2 iterations of 8 prompts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.sizes, args.dim, args.iterations, args.batch_size = [60, 600], 32, 3, 8
    rows = []
    for size in sorted(args.sizes):
        r = measure(size, args)
        rows.append(r)
        s = r["split_share"]
        print(f"{size:>7} prompts x {CANDIDATES} (d {args.dim}): peak RSS {r['rss_gb']:.2f} GB "
              f"(anonymous {r['anon_gb']:.2f} GB; by stage {r['anon_peak_by_stage']}), setup {r['setup_s']:.1f} s, "
              f"iteration {r['iter_s']:.2f} s (growth over the run x{r['iter_growth']}), split ENN {s['enn']:.0%} / acquisition "
              f"{s['acquisition']:.0%} / store {s['store']:.0%} / other {s['other']:.0%}", flush=True)
    small, large = rows[0], rows[-1]
    ratio = large["iter_s"] / small["iter_s"]
    print(f"iteration time x{ratio:.2f} from {small['prompts']} to {large['prompts']} prompts (target <= {TARGET_GROWTH}); "
          f"peak RSS {large['rss_gb']:.2f} GB (target <= {TARGET_RSS_GB}); non-ENN share {large['non_enn_share']:.1%} "
          f"(target <= {TARGET_NON_ENN:.0%})")
    tag = {6000: "6k", 60000: "60k"}
    summary: dict[str, Any] = {}
    for r in rows:
        key = tag.get(r["prompts"], str(r["prompts"]))
        summary[f"rss_gb_{key}"] = r["rss_gb"]
        summary[f"anon_gb_{key}"] = r["anon_gb"]
        summary[f"iter_s_{key}"] = r["iter_s"]
    summary.update({
        "non_enn_share": large["non_enn_share"], "iter_ratio": round(ratio, 3),
        "targets_met": {"rss": large["rss_gb"] <= TARGET_RSS_GB, "anon": large["anon_gb"] <= TARGET_RSS_GB, "iter_ratio": ratio <= TARGET_GROWTH,
                        "non_enn_share": large["non_enn_share"] <= TARGET_NON_ENN},
        "candidates": CANDIDATES, "dim": args.dim, "iterations": args.iterations, "method": args.method, "runs": rows,
    })
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
