"""Wall time per stage of a run, for the bench's time split.

``StageTimes.measure(stage)`` adds the wall seconds of a block to ``stage``; ``write``
adds this process's totals to ``timings.json`` in the run directory (so a resumed run's
sessions add up; a session killed before it writes loses only its own figures). The file
is informational: nothing reads it back into a run, so timings never change results.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_FILE = "timings.json"


class StageTimes:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def write(self, run_dir: str | Path, name: str = TIMINGS_FILE) -> Path:
        """Add these totals to ``run_dir/name`` (created if missing)."""
        path = Path(run_dir) / name
        totals = read_timings(run_dir, name)
        for stage, s in self.seconds.items():
            totals[stage] = totals.get(stage, 0.0) + s
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(totals, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return path


def read_timings(run_dir: str | Path, name: str = TIMINGS_FILE) -> dict[str, float]:
    """stage -> seconds recorded so far ({} when there is no file or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}
