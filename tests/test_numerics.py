"""The floating-point mode of an activepref process is the same in every thread, whatever the
process computed first (issue 11: a resumed run started torch's worker threads inside ENN
training, an uninterrupted one before it, and their Adam moments differed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    torch.set_num_threads(2)
    from activepref.model.enn import ENNShape, EnsembleRewardModel, ReplayBuffer, TrainConfig
    from activepref.model.numerics import flush_denormals_in_every_thread

    def flushed() -> int:
        x = torch.from_numpy(np.full(1 << 22, 1e-39, dtype=np.float32))  # subnormal; big enough to run on both threads
        return int((x * 1.0 == 0).sum())

    if sys.argv[1] == "cli":
        flush_denormals_in_every_thread()
    first = sys.argv[2]
    buf = ReplayBuffer()
    buf.append(np.arange(50), np.arange(50, 100))
    model = EnsembleRewardModel(ENNShape(dim=8, heads=2, hidden=4), seed=0)
    if first == "predict":
        model.predict(torch.randn(100_000, 8))  # starts the worker threads outside training
    model.fit(torch.randn(100, 8), buf, TrainConfig(steps=2), 50, np.random.default_rng(0))
    print(flushed())
    """
)


def _flushed_after(setup: str, first: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, setup, first], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["predict", "fit"])
def test_with_the_cli_setup_every_thread_flushes_whatever_ran_first(first: str) -> None:
    assert _flushed_after("cli", first) == 1 << 22


def test_without_it_the_worker_threads_mode_depends_on_history() -> None:
    """Why the CLI sets the mode up front: torch's set_flush_denormal reaches the calling
    thread only, so a process whose workers start inside fit keeps flushing in them after fit
    restored the main thread, and one whose workers started earlier does not."""
    if _flushed_after("library", "fit") == 0:
        pytest.skip("this torch build propagates the mode to its worker threads")
    assert _flushed_after("library", "predict") != _flushed_after("library", "fit")
