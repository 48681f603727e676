"""Fixtures shared by the tests that drive the CLI in process (import them into a module to use)."""

from __future__ import annotations

import pytest

from activepref import cli


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The machine has 2 cores, often shared: one intra-op thread avoids spin-wait slowdowns."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """Rich wraps at 80 columns when not on a terminal; keep messages (and long paths) on one line."""
    monkeypatch.setattr(cli.console, "width", 10_000)
    monkeypatch.setattr(cli.err_console, "width", 10_000)
