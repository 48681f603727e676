"""Configuration of ``activepref apl`` (YAML or JSON; unknown keys are errors).

A minimal file::

    prompts: prompts.jsonl          # JSONL with `prompt` (and optional `prompt_id`)
    policy: {backend: transformers, model: HuggingFaceTB/SmolLM2-135M-Instruct}
    judge:
      kind: pairwise                # or likert
      model: {backend: openai, model: gpt-4o, base_url: https://..., api_key_env: OPENAI_API_KEY}
    acquisitions: [random, certainty]
    seeds: [0, 1]
    rounds: 4

Every other field has a default (see ``activepref apl --help`` and the field descriptions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError, model_validator

from activepref.config import JudgeConfig, ModelConfig, _format_error, _set_path, _Strict, read_yaml_config
from activepref.errors import ConfigError

BUILTIN_PROMPTS = "mtbench"


class LoraConfig(_Strict):
    """LoRA adapters (peft) instead of full fine-tuning; merged into the policy after each round."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="adapter dropout")
    target_modules: list[str] | str = Field("all-linear", description="modules that get adapters")
    last_layers: int | None = Field(
        None, ge=1,
        description="adapters only in the last N decoder layers (peft layers_to_transform): backpropagation then stops "
        "at the lowest adapted layer, so training costs about forward + N/L of a backward pass; default: every layer",
    )


class DPOSettings(_Strict):
    """Fine-tuning with TRL's DPOTrainer after each round (004 Table 1 uses beta 0.2, lr 1e-6,
    50-70 epochs on GPT-2/Pythia; small CPU runs need fewer epochs and a larger lr)."""

    beta: float = Field(0.1, gt=0, description="DPO beta (also the beta of the implicit reward)")
    learning_rate: float = Field(5e-6, gt=0, description="AdamW learning rate")
    epochs: float = Field(2.0, gt=0, description="epochs over all labels acquired so far")
    batch_size: int = Field(4, ge=1, description="preference pairs per optimiser step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps accumulated per update")
    max_length: int = Field(1024, ge=16, description="prompt+completion tokens kept")
    reinit: bool = Field(True, description="re-train from theta0 on all labels each round (004); false = continue from the last round on its new labels (004 App. D)")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters (peft) instead of all weights")
    extra: dict[str, Any] = Field(default_factory=dict, description="further DPOConfig keyword arguments")


def _known_acquisition(name: str) -> str:
    from activepref.apl.acquisitions import ACQUISITIONS

    return ACQUISITIONS.check_name(name)


class APLJudgeConfig(JudgeConfig):
    """Who labels pairs and referees the win rate: any registered judge of new responses,
    ``pairwise`` by default (which of two answers is better, order drawn per pair, as in 004);
    a judge that scores (``likert``: 1-5 per aspect) prefers the higher score."""

    kind: str = Field("pairwise", description="judge kind (pairwise, likert, or a plugin's; not replay)")

    @model_validator(mode="after")
    def _judges_new_responses(self) -> APLJudgeConfig:
        from activepref.judges import JUDGES

        if JUDGES.get(self.kind).pool_scores:
            raise ValueError(f"judge kind {self.kind!r} only reads a pool's stored scores; APL judges its policy's new completions")
        if self.model is None:
            raise ValueError("judge.model: APL's judge needs a model ({backend: ..., model: ...})")
        return self


class APLConfig(_Strict):
    prompts: str = Field(..., description="prompt file (JSONL/Parquet with `prompt`), or 'mtbench' for the shipped 80 questions")
    eval_prompts: str | None = Field(None, description="held-out prompt file; default: `eval_size` prompts split off `prompts`")
    eval_size: int = Field(16, ge=1, description="held-out prompts for the win rate (when `eval_prompts` is not given)")
    policy: ModelConfig = Field(..., description="the policy theta0: a local model (backend transformers)")
    judge: APLJudgeConfig
    acquisitions: list[Annotated[str, AfterValidator(_known_acquisition)]] = Field(
        default_factory=lambda: ["random", "certainty"], min_length=1,
        description="acquisitions run side by side (random, entropy, certainty, hybrid: activepref.apl.acquisitions)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="one run per (acquisition, seed)")
    rounds: int = Field(2, ge=1, description="acquisition rounds T")
    prompts_per_round: int = Field(16, ge=1, description="S: prompts sampled (and answered twice) per round")
    labels_per_round: int = Field(4, ge=1, description="M: pairs sent to the judge per round (M <= S)")
    entropy_samples: int = Field(4, ge=2, description="N: samples per prompt for the entropy estimate (the first two form the pair)")
    hybrid_factor: int = Field(2, ge=1, description="J: hybrid ranks J*S prompts by entropy before certainty")
    max_tokens: int = Field(64, ge=1, description="completion length cap (acquisition and evaluation)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of acquisition samples (1 = samples from p_theta)")
    eval_temperature: float = Field(0.7, ge=0, description="temperature of the win-rate completions (same seed for policy and theta0)")
    scoring_batch_size: int = Field(8, ge=1, description="sequences per forward pass when scoring log-probs")
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    cache_path: str | None = Field(None, description="request cache (SQLite) shared by runs; default <out>/requests.sqlite")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")

    @model_validator(mode="after")
    def _check(self) -> APLConfig:
        if self.policy.backend != "transformers":
            raise ValueError("policy.backend must be 'transformers' (the policy is fine-tuned locally)")
        if self.policy.dtype != "float32":
            raise ValueError(
                "policy.dtype must be float32: DPO keeps the trained weights in it (small updates round away in "
                "bfloat16); for mixed precision on a GPU add dpo.extra: {bf16: true}"
            )
        if self.labels_per_round > self.prompts_per_round:
            raise ValueError(f"labels_per_round (M={self.labels_per_round}) must not exceed prompts_per_round (S={self.prompts_per_round})")
        if self.dpo.lora is not None and not self.dpo.reinit:
            raise ValueError("dpo.lora needs dpo.reinit: true (continued LoRA training would use theta_t, not theta0, as reference)")
        if len(set(self.acquisitions)) != len(self.acquisitions) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("acquisitions and seeds must not repeat")
        return self




def load_apl_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> APLConfig:
    """Read a YAML (or JSON) file, or start from ``base``; apply dotted ``overrides``; validate.
    Relative prompt paths are relative to the config file. Errors name the file and the field."""
    data: dict[str, Any] = dict(base or {})
    source = "<built-in config>"
    if path is not None:
        source = str(path)
        data = read_yaml_config(Path(path), ("prompts", "eval_prompts"), keep=(BUILTIN_PROMPTS,))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key, value)
    try:
        return APLConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
