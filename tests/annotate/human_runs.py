"""Helpers of the annotation tests: a run whose human judge waits, a served app, and
simulated annotators (through the queue, as the app's handlers do, or over HTTP)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx

from activepref.annotate.queue import AnnotationQueue
from activepref.config import load_config
from activepref.core import runs
from activepref.judges.human import AwaitingLabels
from activepref.pools.sources import synthetic_pool, write_pool

CLI = [sys.executable, "-m", "activepref"]


def human_config(tmp_path: Path, judge: dict[str, Any], **overrides: Any) -> Any:
    pool = write_pool(synthetic_pool(n_prompts=overrides.pop("n_prompts", 24), candidates=4, dim=8, seed=3), tmp_path / "pool.parquet")
    base = {"pool": str(pool), "method": "dts", "batch_size": 6, "iterations": 2, "seed": 0, "judge": judge}
    base.update(overrides)
    return load_config(overrides={k: v for k, v in base.items()})


def start_awaiting(config: Any, out: Path) -> str:
    """Run until the judge stops at 'awaiting labels' (``--no-wait``); the stop message."""
    try:
        runs.run(config, out, wait_for_labels=False)
    except AwaitingLabels as exc:
        return str(exc)
    raise AssertionError("the run did not stop for labels")


def label_everything(run_dir: Path, annotators: list[str], shown: str = "a") -> int:
    """Every annotator labels every pair the queue hands them (choice ``shown``); returns labels written."""
    queue = AnnotationQueue.open(run_dir)
    written = 0
    try:
        known = set(queue.annotators())
        for name in annotators:
            if name not in known:
                queue.add_annotator(name)
        for name in annotators:
            while (task := queue.next_task(name)) is not None:
                written += queue.submit(task, name, shown).status == "saved"
    finally:
        queue.close()
    return written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServedApp:
    """`activepref annotate RUN` in its own process, as a user starts it."""

    run_dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def serve(run_dir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> ServedApp:
    port = port or free_port()
    proc = subprocess.Popen([*CLI, "annotate", str(run_dir), "--port", str(port), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    app = ServedApp(run_dir, port, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(app.url + "/", timeout=2).status_code == 401:
                return app
        except httpx.TransportError:
            time.sleep(0.1)
    app.kill()
    raise AssertionError("the app did not start listening within 60 s")


def add_link(run_dir: Path, name: str, port: int) -> str:
    out = subprocess.run([*CLI, "annotate", str(run_dir), "--add-annotator", name, "--port", str(port)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^{re.escape(name)}: (http://\S+)$", out, re.M)
    assert match, out
    return match.group(1)


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
