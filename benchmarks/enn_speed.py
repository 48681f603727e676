#!/usr/bin/env python
"""Speed of the batched ENN (``activepref.model.enn``) against its FLOP floor and the per-head loop.

What is measured, per thread count (``torch.set_num_threads``; default 1 and all cores):

* ``sgemm``: the machine's float32 GEMM rate, best of several ``torch.mm`` of two
  2048 x 2048 matrices at that thread count.
* ``train``: one ``EnsembleRewardModel.fit`` call of 100 steps, batch 64 pairs, K = 20 heads
  of 2 hidden layers x 128 on d = 2560 frozen random features (12,800 rows), drawing from a
  6,400-pair replay buffer (|D_train| = 6,400). Each repeat uses a fresh model and the same
  seed; min and median over repeats are reported (``train_s`` is the min: on a shared machine
  noise only ever adds time).
* ``reference train``: the per-head Python-loop reference of the same math
  (``tests/references/enn_reference.py``: K ``nn.Sequential`` heads, ``reference_loss`` =
  eq. 5 with autograd including the anchor term zeta ||phi_k - phi~_k||^2, one
  ``torch.optim.Adam`` over all parameters) on exactly the minibatches ``fit`` draws (the
  sampling of ``fit`` is replayed with the same seed), feature gathering included. If it
  would exceed ``--reference-budget`` seconds, it stops after the step that crosses the
  budget (at least 5 steps) and its time is scaled linearly to 100 steps (the table says so).
  The reference and fast models are then compared on the prediction rows (same number of
  steps, same batches) to show that the reference really ran eq. 5, anchor term included.
* ``predict``: ``EnsembleRewardModel.predict`` (mean and std over heads) of 64 x 30 = 1920
  candidates, min/median of repeats; ``reference predict``: ``reference_rewards`` plus
  mean/std on the same rows.

FLOP floor (forward + weight-gradient GEMM FLOPs, n = 2B = 128 rows per step):
first layer 2 n d (K h) forward + the same for its weight gradient (features are frozen, so no
input gradient); each deeper hidden layer 2 n K h h forward, weight gradient and input
gradient; output layer 2 n K h forward, weight gradient and input gradient. Floor time = 100 x
that / sgemm rate. Prediction floor = forward FLOPs of 1920 rows / sgemm rate. "Achieved
GFLOP/s" = floor FLOPs / measured time, so ``train_vs_floor`` = measured / floor time.

Issue goals (reported, not asserted): training >= 3x faster than the per-head loop and within
2x of its floor; prediction within 1.5x of its floor.

Output: tables, then as the last stdout line one JSON object for the run with the most
threads (``threads, train_s, predict_s, reference_train_s, gflops, sgemm_gflops`` and extra
keys, including ``by_threads``). ``--quick`` shrinks every size for a smoke run of seconds.
``--profile`` additionally prints a torch.profiler op table of a few fast training steps.

    python benchmarks/enn_speed.py [--quick] [--threads 1,2] [--reference-budget 60] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from references.enn_reference import build_heads, reference_loss, reference_rewards, snapshot  # noqa: E402

from activepref.model.enn import ENNShape, EnsembleRewardModel, ReplayBuffer, TrainConfig  # noqa: E402

GOAL_SPEEDUP = 3.0
GOAL_TRAIN_VS_FLOOR = 2.0
GOAL_PREDICT_VS_FLOOR = 1.5


@dataclass(frozen=True)
class Sizes:
    dim: int
    heads: int
    hidden: int
    layers: int
    steps: int
    batch: int  # pairs per step
    buffer_pairs: int
    feature_rows: int
    predict_rows: int
    sgemm_n: int
    sgemm_reps: int
    train_reps: int
    predict_reps: int
    reference_budget_s: float


FULL = Sizes(2560, 20, 128, 2, 100, 64, 6400, 12800, 64 * 30, 2048, 8, 3, 5, 60.0)
QUICK = Sizes(256, 8, 32, 2, 10, 16, 320, 640, 8 * 30, 512, 3, 2, 2, 5.0)

MODEL_SEED = 7
FIT_SEED = 11
ZETA = 1.0


# ----------------------------------------------------------------------------- FLOPs


def train_step_flops(s: Sizes) -> float:
    n, d, k, h = 2 * s.batch, s.dim, s.heads, s.hidden
    first = 2 * (2.0 * n * d * k * h)  # forward + weight gradient (frozen features: no input grad)
    deeper = (s.layers - 1) * 3 * (2.0 * n * k * h * h)  # forward + weight grad + input grad
    out = 3 * (2.0 * n * k * h)  # forward + weight grad + input grad
    return first + deeper + out


def predict_flops(s: Sizes) -> float:
    n, d, k, h = s.predict_rows, s.dim, s.heads, s.hidden
    return 2.0 * n * d * k * h + (s.layers - 1) * 2.0 * n * k * h * h + 2.0 * n * k * h


def sgemm_gflops(n: int, reps: int) -> float:
    """Best-of float32 ``torch.mm`` rate of two n x n matrices."""
    return shaped_gemm_gflops(n, n, n, reps)


def shaped_gemm_gflops(m: int, k: int, n: int, reps: int, min_time_s: float = 0.3) -> float:
    """Best-of rate of [m, k] @ [k, n]: at least ``reps`` timed calls after one warm-up call,
    more until ``min_time_s`` has been spent (small shapes need many tries on a noisy box)."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    c = torch.empty(m, n)
    torch.mm(a, b, out=c)
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t0 < min_time_s and len(times) < 10_000):
        times.append(_timed(lambda: torch.mm(a, b, out=c)))
    return 2.0 * m * k * n / min(times) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- problem


def make_problem(s: Sizes) -> tuple[torch.Tensor, ReplayBuffer, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(s.feature_rows, s.dim, generator=g)
    rng = np.random.default_rng(0)
    chosen = rng.integers(0, s.feature_rows, s.buffer_pairs)
    rejected = (chosen + rng.integers(1, s.feature_rows, s.buffer_pairs)) % s.feature_rows
    buffer = ReplayBuffer()
    buffer.append(chosen, rejected)
    predict_x = features[: s.predict_rows].contiguous()
    return features, buffer, predict_x


def shape_of(s: Sizes) -> ENNShape:
    return ENNShape(dim=s.dim, heads=s.heads, hidden=s.hidden, layers=s.layers)


def config_of(s: Sizes, steps: int | None = None) -> TrainConfig:
    return TrainConfig(steps=s.steps if steps is None else steps, batch_size=s.batch)


def fit_batches(
    pairs: np.ndarray, train_size: int, batch: int, steps: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The [B, 2] minibatches that ``EnsembleRewardModel._fit`` draws from ``rng`` (replayed)."""
    train = pairs[rng.choice(len(pairs), size=min(len(pairs), train_size), replace=False)]
    batch = min(batch, len(train))
    order, cursor, out = rng.permutation(len(train)), 0, []
    for _ in range(steps):
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(train)), 0
        out.append(train[order[cursor : cursor + batch]])
        cursor += batch
    return out


def run_fast_fit(s: Sizes, features, buffer, steps: int | None = None) -> tuple[float, EnsembleRewardModel]:
    model = EnsembleRewardModel(shape_of(s), seed=MODEL_SEED, zeta=ZETA)
    rng = np.random.default_rng(FIT_SEED)
    cfg = config_of(s, steps)
    t0 = time.perf_counter()
    model.fit(features, buffer, cfg, len(buffer), rng)
    return time.perf_counter() - t0, model


def run_reference_fit(s: Sizes, features, buffer, budget_s: float, min_steps: int = 5):
    """Adam on eq. 5 per head; returns (seconds, steps run, heads, anchors)."""
    heads = build_heads(shape_of(s), seed=MODEL_SEED)
    anchors = snapshot(heads)
    cfg = config_of(s)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.lr)
    batches = fit_batches(buffer.pairs(), len(buffer), cfg.batch_size, cfg.steps, np.random.default_rng(FIT_SEED))
    t0 = time.perf_counter()
    steps = 0
    for idx in batches:
        xc = features.index_select(0, torch.from_numpy(np.ascontiguousarray(idx[:, 0])))
        xr = features.index_select(0, torch.from_numpy(np.ascontiguousarray(idx[:, 1])))
        opt.zero_grad()
        loss = reference_loss(heads, anchors, xc, xr, cfg.gamma, ZETA)
        loss.backward()
        opt.step()
        steps += 1
        if steps >= min_steps and time.perf_counter() - t0 > budget_s:
            break
    return time.perf_counter() - t0, steps, heads, anchors


def anchor_term(heads, anchors, zeta: float) -> float:
    with torch.no_grad():
        total = sum(
            float(((p - a) ** 2).sum()) for head, anc in zip(heads, anchors) for p, a in zip(head.parameters(), anc)
        )
    return zeta * total / len(heads)


def warm_up(s: Sizes, features, buffer, predict_x) -> None:
    run_fast_fit(s, features, buffer, steps=2)
    EnsembleRewardModel(shape_of(s), seed=MODEL_SEED).predict(predict_x)
    run_reference_fit(s, features, buffer, budget_s=0.0, min_steps=1)
    reference_rewards(build_heads(shape_of(s), seed=MODEL_SEED), predict_x[:64])


# ----------------------------------------------------------------------------- one thread count


def measure(s: Sizes, threads: int, features, buffer, predict_x, check: bool, log) -> dict:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    log(f"[threads={threads}] sgemm ... (1-min load average {load_before:.2f})")
    sg = sgemm_gflops(s.sgemm_n, s.sgemm_reps)
    shaped_train = shaped_gemm_gflops(2 * s.batch, s.dim, s.heads * s.hidden, s.sgemm_reps)
    shaped_wgrad = shaped_gemm_gflops(s.dim, 2 * s.batch, s.heads * s.hidden, s.sgemm_reps)
    shaped_pred = shaped_gemm_gflops(s.predict_rows, s.dim, s.heads * s.hidden, max(2, s.sgemm_reps // 2))
    log(f"[threads={threads}] warm-up ...")
    warm_up(s, features, buffer, predict_x)

    log(f"[threads={threads}] fast training x{s.train_reps} ...")
    train_times, model = [], None
    for _ in range(s.train_reps):
        t, model = run_fast_fit(s, features, buffer)
        train_times.append(t)

    log(f"[threads={threads}] fast prediction x{s.predict_reps} ...")
    predict_times = [_timed(lambda: model.predict(predict_x)) for _ in range(s.predict_reps)]

    log(f"[threads={threads}] reference training (budget {s.reference_budget_s:.0f} s) ...")
    ref_t, ref_steps, heads, anchors = run_reference_fit(s, features, buffer, s.reference_budget_s)
    ref_train_s = ref_t * s.steps / ref_steps

    log(f"[threads={threads}] reference prediction ...")
    ref_predict_times = []
    ref_r = None
    for _ in range(max(2, s.predict_reps // 2)):
        t0 = time.perf_counter()
        ref_r = reference_rewards(heads, predict_x)
        ref_r.mean(0).double().numpy(), ref_r.std(0).double().numpy()
        ref_predict_times.append(time.perf_counter() - t0)

    tf, pf = train_step_flops(s) * s.steps, predict_flops(s)
    train_s, predict_s = min(train_times), min(predict_times)
    train_floor, predict_floor = tf / (sg * 1e9), pf / (sg * 1e9)
    out = {
        "threads": threads,
        "train_s": train_s,
        "train_median_s": statistics.median(train_times),
        "predict_s": predict_s,
        "predict_median_s": statistics.median(predict_times),
        "reference_train_s": ref_train_s,
        "reference_steps_timed": ref_steps,
        "reference_scaled": ref_steps < s.steps,
        "reference_predict_s": min(ref_predict_times),
        "gflops": tf / train_s / 1e9,
        "predict_gflops": pf / predict_s / 1e9,
        "sgemm_gflops": sg,
        "first_layer_fwd_gemm_gflops": shaped_train,
        "first_layer_wgrad_gemm_gflops": shaped_wgrad,
        "predict_gemm_gflops": shaped_pred,
        "train_flops": tf,
        "predict_flops": pf,
        "train_floor_s": train_floor,
        "predict_floor_s": predict_floor,
        "train_vs_floor": train_s / train_floor,
        "predict_vs_floor": predict_s / predict_floor,
        "speedup_vs_reference": ref_train_s / train_s,
        "predict_speedup_vs_reference": min(ref_predict_times) / predict_s,
        "reference_anchor_term": anchor_term(heads, anchors, ZETA),
        # Other processes on the machine: the load average counts this benchmark's own threads;
        # clearly above the row's thread count means contention inflated the row's timings
        # (OpenMP suffers most when all cores are asked for).
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }
    if check:
        # Same steps, same minibatches: the batched fit and the eq. 5 reference must agree.
        if ref_steps == s.steps:
            fast_model = model
        else:
            _, fast_model = run_fast_fit(s, features, buffer, steps=ref_steps)
        fast_r = fast_model.rewards(predict_x)
        scale = float(ref_r.abs().max())
        out["check_steps"] = ref_steps
        out["check_max_abs_diff"] = float((fast_r - ref_r).abs().max())
        out["check_rel_diff"] = out["check_max_abs_diff"] / max(scale, 1e-30)
    return out


# ----------------------------------------------------------------------------- profile


def profile_fast(s: Sizes, features, buffer, threads: int, steps: int = 10) -> str:
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    run_fast_fit(s, features, buffer, steps=2)
    model = EnsembleRewardModel(shape_of(s), seed=MODEL_SEED, zeta=ZETA)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.fit(features, buffer, config_of(s, steps), len(buffer), np.random.default_rng(FIT_SEED))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# ----------------------------------------------------------------------------- report


def print_tables(s: Sizes, rows: list[dict], quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    title = (
        f"ENN training: {s.steps} steps, batch {s.batch} pairs, K={s.heads}, {s.layers}x{s.hidden}, "
        f"d={s.dim}, buffer {s.buffer_pairs} pairs{' (QUICK sizes)' if quick else ''}"
    )
    t = Table(title=title)
    for col in (
        "threads",
        "sgemm GF/s",
        "train s (min / med)",
        "floor s",
        "achieved GF/s",
        "vs floor",
        f"goal <={GOAL_TRAIN_VS_FLOOR:g}x",
        "reference s",
        "ref steps timed",
        "speedup",
        f"goal >={GOAL_SPEEDUP:g}x",
        "ref anchor term",
        "load avg",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["threads"]),
            f"{r['sgemm_gflops']:.1f}",
            f"{r['train_s']:.3f} / {r['train_median_s']:.3f}",
            f"{r['train_floor_s']:.3f}",
            f"{r['gflops']:.1f}",
            f"{r['train_vs_floor']:.2f}x",
            "pass" if r["train_vs_floor"] <= GOAL_TRAIN_VS_FLOOR else "FAIL",
            f"{r['reference_train_s']:.2f}" + (" (scaled)" if r["reference_scaled"] else ""),
            f"{r['reference_steps_timed']}/{s.steps}",
            f"{r['speedup_vs_reference']:.2f}x",
            "pass" if r["speedup_vs_reference"] >= GOAL_SPEEDUP else "FAIL",
            f"{r['reference_anchor_term']:.3g}",
            "{:.1f}-{:.1f}".format(*r["load_avg_1min"]),
        )
    console.print(t)

    p = Table(title=f"ENN prediction: {s.predict_rows} candidates (mean + std over {s.heads} heads)")
    for col in (
        "threads",
        "predict s (min / med)",
        "floor s",
        "achieved GF/s",
        "vs floor",
        f"goal <={GOAL_PREDICT_VS_FLOOR:g}x",
        "reference s",
        "speedup",
    ):
        p.add_column(col, justify="right")
    for r in rows:
        p.add_row(
            str(r["threads"]),
            f"{r['predict_s']:.4f} / {r['predict_median_s']:.4f}",
            f"{r['predict_floor_s']:.4f}",
            f"{r['predict_gflops']:.1f}",
            f"{r['predict_vs_floor']:.2f}x",
            "pass" if r["predict_vs_floor"] <= GOAL_PREDICT_VS_FLOOR else "FAIL",
            f"{r['reference_predict_s']:.4f}",
            f"{r['predict_speedup_vs_reference']:.2f}x",
        )
    console.print(p)

    g = Table(title="GEMM rates at the model's shapes (GFLOP/s)")
    for col in (
        "threads",
        f"sgemm {s.sgemm_n}^2",
        f"fwd [{2 * s.batch}x{s.dim}]@[{s.dim}x{s.heads * s.hidden}]",
        f"wgrad [{s.dim}x{2 * s.batch}]@[{2 * s.batch}x{s.heads * s.hidden}]",
        f"predict [{s.predict_rows}x{s.dim}]@[{s.dim}x{s.heads * s.hidden}]",
    ):
        g.add_column(col, justify="right")
    for r in rows:
        g.add_row(
            str(r["threads"]),
            f"{r['sgemm_gflops']:.1f}",
            f"{r['first_layer_fwd_gemm_gflops']:.1f}",
            f"{r['first_layer_wgrad_gemm_gflops']:.1f}",
            f"{r['predict_gemm_gflops']:.1f}",
        )
    console.print(g)
    console.print(
        f"'load avg': 1-minute load average at the start and end of each row ({os.cpu_count()} CPUs; it counts "
        "this benchmark's own threads). Clearly above the row's thread count = other processes competed and "
        "that row's times are inflated."
    )
    for r in rows:
        if r["reference_scaled"]:
            console.print(
                f"threads={r['threads']}: reference training timed for {r['reference_steps_timed']} of {s.steps} "
                f"steps and scaled linearly to {s.steps}."
            )
        if "check_max_abs_diff" in r:
            console.print(
                f"threads={r['threads']}: fast vs eq. 5 reference after {r['check_steps']} identical steps: "
                f"max |delta reward| = {r['check_max_abs_diff']:.3g} (relative {r['check_rel_diff']:.3g})"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and repeats (smoke run)")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--reference-budget", type=float, default=None, help="seconds before the reference is scaled")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of fast training")
    args = ap.parse_args(argv)

    s = QUICK if args.quick else FULL
    if args.reference_budget is not None:
        s = Sizes(**{**s.__dict__, "reference_budget_s": args.reference_budget})
    all_cores = torch.get_num_threads()
    threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, all_cores})

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    wall0 = time.perf_counter()
    features, buffer, predict_x = make_problem(s)
    rows = [measure(s, t, features, buffer, predict_x, check=(t == max(threads)), log=log) for t in threads]
    if args.profile:
        print(profile_fast(s, features, buffer, max(threads)))
    print_tables(s, rows, args.quick)

    top = dict(rows[-1])
    top["by_threads"] = {str(r["threads"]): r for r in rows}
    top["quick"] = args.quick
    top["sizes"] = s.__dict__
    top["wall_s"] = time.perf_counter() - wall0
    print(f"wall time {top['wall_s']:.1f} s")
    print(json.dumps(top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
