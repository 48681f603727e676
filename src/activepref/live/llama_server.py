"""Start and stop llama.cpp's ``llama-server`` (built by ``scripts/build_llama_server.sh``) for a
local GGUF model, as an OpenAI-compatible endpoint on loopback: the fast way to generate and
judge with the shipped small models on CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from activepref.errors import ActivePrefError


def default_binary() -> Path:
    """``$ACTIVEPREF_LLAMA_SERVER``, else ``${ACTIVEPREF_LLAMA_DIR:-~/.cache/activepref/llama.cpp}/llama-server``."""
    if os.environ.get("ACTIVEPREF_LLAMA_SERVER"):
        return Path(os.environ["ACTIVEPREF_LLAMA_SERVER"]).expanduser()
    base = os.environ.get("ACTIVEPREF_LLAMA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "activepref", "llama.cpp")
    return Path(base) / "llama-server"


def _die_with_parent() -> None:
    """Linux: the kernel sends the server SIGKILL when the process that started it dies, so a
    killed build or benchmark leaves no server behind (the ``with`` block cannot run then)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``with LlamaServer(gguf, slots=4, log=path) as srv: srv.base_url``; the process is
    terminated (then killed) on exit, also when the body raises, and dies with its parent.

    The base URL is part of an ``openai`` backend's endpoint and so of its request-cache keys:
    give ``port`` to keep them stable across restarts (a free port is picked otherwise)."""

    def __init__(
        self, gguf: str | Path, slots: int = 4, log: str | Path | None = None, binary: str | Path | None = None,
        context: int | None = None, threads: int | None = None, start_timeout_s: float = 180.0, port: int | None = None,
    ) -> None:
        self.binary = Path(binary) if binary else default_binary()
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise ActivePrefError(f"no llama-server binary at {self.binary}; build it with scripts/build_llama_server.sh")
        self.gguf = Path(gguf)
        self.slots = slots
        self.log = Path(log) if log else Path(f"/tmp/llama-server-{os.getpid()}-{self.gguf.stem}.log")
        self.context = context
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.requested_port = port  # a fixed port keeps the endpoint -- and so request-cache keys -- stable across restarts
        self.port = 0
        self.model = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.root}{path}", timeout=2.0) as r:  # noqa: S310 - loopback only
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def start(self) -> LlamaServer:
        self.port = self.requested_port or free_port()
        cmd = [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port), "-np", str(self.slots), "--metrics"]
        if self.context:
            cmd += ["-c", str(self.context)]
        if self.threads:
            cmd += ["-t", str(self.threads)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise ActivePrefError(f"llama-server exited with {self._proc.returncode} while starting; see {self.log}")
            try:
                status, _ = self._get("/health")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ActivePrefError(f"llama-server not healthy after {self.start_timeout_s:.0f} s; see {self.log}")
            time.sleep(0.25)
        _, body = self._get("/v1/models")
        self.model = json.loads(body)["data"][0]["id"]
        return self

    @property
    def exit_code(self) -> int | None:
        """None while the server runs (or was never started), else its exit status."""
        return None if self._proc is None else self._proc.poll()

    def metrics(self) -> dict[str, float]:
        """The Prometheus counters of ``/metrics`` (``llamacpp:...`` names, e.g.
        ``llamacpp:prompt_tokens_cached_total``), as floats."""
        status, text = self._get("/metrics")
        if status != 200:
            raise ActivePrefError(f"llama-server /metrics answered {status}: {text[:200]}")
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^(llamacpp:[A-Za-z_:]+)(?:\{[^}]*\})?\s+(\S+)$", line.strip())
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
