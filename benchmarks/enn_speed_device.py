"""ENN training and prediction on an accelerator: batched heads vs the per-head Python loop.

Same problem as ``enn_speed.py`` (100 steps, 64 pairs per step, K 20 heads of 2 x 128, d 2560,
6,400-pair replay buffer; prediction of 64 x 30 candidates), both versions on the same device
in one run, with the device's measured float32 matmul rate for scale. Timings synchronise the
device. Prints a table, then one JSON line:
{"device", "train_s", "reference_train_s", "speedup", "predict_s", "reference_predict_s", "sgemm_tflops"}.

    python benchmarks/enn_speed_device.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references.enn_reference import build_heads, reference_loss, snapshot  # noqa: E402

from activepref.model.enn import ENNShape, EnsembleRewardModel, ReplayBuffer, TrainConfig  # noqa: E402

D, K, H, STEPS, BATCH, BUFFER, CANDIDATES = 2560, 20, 128, 100, 64, 6400, 64 * 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="10 steps instead of 100")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = 10 if args.quick else STEPS
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2 * BUFFER, D, generator=g).to(device)
    buffer = ReplayBuffer()
    buffer.append(np.arange(BUFFER), np.arange(BUFFER, 2 * BUFFER))
    shape = ENNShape(D, K, H, 2)
    cfg = TrainConfig(steps=steps, batch_size=BATCH)

    a = torch.randn(4096, 4096, device=device)
    _time(lambda: a @ a, device)
    mm_s = _time(lambda: [a @ a for _ in range(10)], device) / 10
    sgemm_tflops = 2 * 4096**3 / mm_s / 1e12

    model = EnsembleRewardModel(shape, seed=0, device=args.device)
    model.fit(features, buffer, TrainConfig(steps=3, batch_size=BATCH), BUFFER, np.random.default_rng(0))  # warm-up
    train_s = _time(lambda: model.fit(features, buffer, cfg, BUFFER, np.random.default_rng(1)), device)
    x = features[:CANDIDATES]
    model.predict(x)
    predict_s = _time(lambda: model.predict(x), device)

    heads = build_heads(shape, seed=0).to(device)
    anchors = snapshot(heads)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(1)

    def reference_fit() -> None:
        for _ in range(steps):
            idx = rng.choice(BUFFER, size=BATCH, replace=False)
            opt.zero_grad()
            reference_loss(heads, anchors, features[idx], features[BUFFER + idx], cfg.gamma, 1.0).backward()
            opt.step()

    reference_train_s = _time(reference_fit, device)

    def reference_predict() -> None:
        with torch.no_grad():
            r = torch.stack([h(x).squeeze(1) for h in heads])
            r.mean(0).cpu(), r.std(0).cpu()

    reference_predict()
    reference_predict_s = _time(reference_predict, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"device {name}: float32 matmul {sgemm_tflops:.1f} TFLOP/s")
    print(f"train {steps} steps: batched {train_s:.3f} s, per-head loop {reference_train_s:.3f} s ({reference_train_s / train_s:.1f}x)")
    print(f"predict {CANDIDATES} candidates: batched {predict_s * 1e3:.2f} ms, per-head loop {reference_predict_s * 1e3:.2f} ms")
    print(json.dumps({
        "device": name, "steps": steps, "train_s": train_s, "reference_train_s": reference_train_s,
        "speedup": reference_train_s / train_s, "predict_s": predict_s, "reference_predict_s": reference_predict_s,
        "sgemm_tflops": sgemm_tflops,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
