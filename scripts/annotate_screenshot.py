"""Screenshot of the annotation page for the README (docs/annotate.png).

Builds a run on the built-in pool (MT-bench prompts with real responses) whose human judge
waits for labels, serves `activepref annotate RUN`, opens a token link in headless Chromium
(Debian's chromium; Playwright downloads nothing) and saves the page.

    python scripts/annotate_screenshot.py --out docs/annotate.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from activepref.annotate.queue import AnnotationQueue
from activepref.config import load_config
from activepref.core import runs
from activepref.judges.human import AwaitingLabels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/annotate.png"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs chromium on PATH (apt install chromium)")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="annotate-shot-"))
    config = load_config(overrides={"pool": "builtin", "method": "dts", "batch_size": 40, "iterations": 1, "seed": 0,
                                    "judge": {"kind": "human", "options": {"labels_per_pair": 2}}})
    try:
        runs.run(config, tmp / "run", wait_for_labels=False)
    except AwaitingLabels:
        pass
    queue = AnnotationQueue.open(tmp / "run")
    token = queue.add_annotator("alice")
    rows = queue.conn.execute(
        "SELECT t.task_id, f.text, s.text FROM annotation_tasks t JOIN responses f ON f.idx = t.first_idx "
        "JOIN responses s ON s.idx = t.second_idx ORDER BY t.task_id").fetchall()

    def richness(a: str, b: str) -> float:  # show a pair the selection made that uses code blocks and lists
        fits = max(len(a), len(b)) < 2200
        return fits * sum(t.count("```") + t.count("\n- ") + t.count("\n1.") for t in (a, b)) + min(len(a), len(b)) / 1e4

    shown = max(rows, key=lambda r: richness(r[1], r[2]))[0]
    for task_id, _, _ in rows:  # label the others, so this one is next and the counters are not all zero
        if task_id != shown and task_id < shown + 3:
            queue.submit(task_id, "alice", "a")
    queue.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "activepref", "annotate", str(tmp / "run"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.goto(f"http://127.0.0.1:{port}/?token={token}")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
