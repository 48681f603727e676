"""The process's floating-point mode: subnormal floats flushed to zero, in every thread.

Adam's moments of tiny gradients go subnormal, and subnormal arithmetic is ~100x slower on
x86, so the ENN trains with flush-to-zero. ``torch.set_flush_denormal`` sets the mode of the
calling thread only; torch's intra-op worker threads take the mode of the thread that starts
them, at the first parallel operation, and keep it. Toggled around training alone, the mode of
the workers therefore depends on what a process happened to compute first: a run resumed at
the training step starts its workers inside training (flushing), an uninterrupted run starts
them earlier (not flushing), and their Adam moments differ in the subnormal range (found by the
kill tests: one moment of 5.6e-45 against 0.0 after five iterations). The command line sets the
mode once, before any torch work, so every thread of every activepref process flushes.
"""

from __future__ import annotations


def flush_denormal_enabled() -> bool:
    """Whether the calling thread flushes subnormal floats to zero (torch has a setter, no
    getter): a subnormal float32 survives a multiplication by one only when flushing is off."""
    import torch

    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0)


def flush_denormals_in_every_thread() -> bool:
    """Turn flush-to-zero on for this thread, before torch starts its worker threads, so they
    inherit it. Call first thing in a process (the CLI and bench workers do). Returns whether
    the CPU supports it."""
    import torch

    return bool(torch.set_flush_denormal(True))
