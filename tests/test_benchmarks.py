"""Every benchmark runs (quick mode) and ends with its JSON contract line. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {
    "enn_speed.py": {"threads", "train_s", "predict_s", "reference_train_s", "gflops", "sgemm_gflops"},
    "client_throughput.py": {"pipeline_rps", "flood_rps", "ratio"},
}
PER_METHOD = {
    "acquisition_speed.py": ["random", "maxmin", "ultrafeedback", "delta_pair", "infomax", "dts", "maxminlcb", "drts", "deltaucb"],
    "design_speed.py": ["dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "bald", "batchbald", "balpm"],
}


@pytest.mark.parametrize("script", sorted({*CONTRACTS, *PER_METHOD}))
def test_benchmark_quick_run_prints_its_json_contract(script: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    if script in CONTRACTS:
        assert CONTRACTS[script] <= set(last)
    else:
        for method in PER_METHOD[script]:
            assert {"fast_ms", "reference_ms"} <= set(last[method]), method
