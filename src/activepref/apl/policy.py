"""The policy being fine-tuned: a plain (trainable) copy of theta0, checkpoints, and one round of
DPO with TRL's ``DPOTrainer`` (optionally LoRA through peft, merged back after training).

A model loaded from a GGUF file is marked quantised by transformers and refused by the
Trainer; :func:`trainable_copy` rebuilds it from its config with the de-quantised weights.
Checkpoints are safetensors files written to a temporary name and renamed.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from activepref.apl.config import DPOSettings
from activepref.errors import ConfigError
from activepref.extras import require

log = logging.getLogger(__name__)


def trainable_copy(model: Any) -> Any:
    """A float copy of ``model`` that the Trainer accepts (GGUF quantisation marks dropped),
    on the same device, in eval mode."""
    transformers = require("transformers")
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(model.state_dict(), strict=True)
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.to(next(model.parameters()).device)
    fresh.eval()
    return fresh


def save_checkpoint(model: Any, path: str | Path) -> None:
    """Write the weights atomically and durably (temporary file, fsync, rename, fsync of the
    folder); tied weights are handled by ``safetensors.torch.save_model``."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power loss before the run store says "trained"
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(like: Any, path: str | Path) -> Any:
    """A copy of ``like`` with the weights of ``path``."""
    from safetensors.torch import load_model

    model = copy.deepcopy(like)
    load_model(model, str(path), device=str(next(like.parameters()).device))
    model.eval()
    return model


# DPOConfig arguments set from their own APL fields or by the loop itself.
RESERVED_DPO_ARGS = frozenset({
    "output_dir", "seed", "data_seed", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "learning_rate", "beta", "max_length",
})


def check_dpo_extra(settings: DPOSettings) -> None:
    """``dpo.extra`` keys must be DPOConfig arguments not set elsewhere (checked before any
    paid call: a typo would otherwise fail only at the first training step)."""
    if not settings.extra:
        return
    import dataclasses

    trl = require("trl")
    known = {f.name for f in dataclasses.fields(trl.DPOConfig)}
    for key in settings.extra:
        if key in RESERVED_DPO_ARGS:
            raise ConfigError(f"dpo.extra.{key}: set by activepref (use the dpo.* field or let the loop set it)")
        if key not in known:
            raise ConfigError(f"dpo.extra.{key}: not an argument of trl.DPOConfig (trl {trl.__version__})")


def dpo_rows(pairs: Sequence[tuple[list[dict[str, str]], str, str]]) -> list[dict[str, Any]]:
    """(prompt messages, chosen text, rejected text) -> TRL conversational preference rows."""
    return [
        {
            "prompt": list(messages),
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for messages, chosen, rejected in pairs
    ]


def count_too_long(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int | None, truncation_mode: str = "keep_start") -> int:
    """How many conversational preference rows TRL's DPOTrainer drops: with keep-start truncation,
    those whose prompt fills ``max_length`` tokens. The prompt is counted as TRL counts it: the
    tokens the chat-templated prompt (with the generation prompt) shares with both the templated
    prompt + chosen and prompt + rejected, which is shorter when a template renders a prompt
    alone differently than followed by an answer."""
    if max_length is None or truncation_mode != "keep_start":
        return 0
    from activepref.apl.scores import common_prefix_length
    from activepref.backends.transformers_local import prompt_ids

    dropped = 0
    for row in rows:
        prompt = list(row["prompt"])
        alone = prompt_ids(tokenizer, prompt)
        length = min(common_prefix_length(alone, prompt_ids(tokenizer, prompt + list(row[side]), add_generation_prompt=False))
                     for side in ("chosen", "rejected"))
        dropped += length >= max_length
    return dropped


def _step_callback(on_step: Callable[[int], None]) -> Any:
    """A ``TrainerCallback`` that calls ``on_step(global_step)`` after each optimiser step."""
    transformers = require("transformers")

    class StepHook(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            on_step(int(state.global_step))

    return StepHook()


def clean_copy(template: Any, trained: Any) -> Any:
    """The trained weights in a fresh copy of ``template`` (theta0, which no trainer touched).

    TRL's trainers patch the model they train: ``add_fused_lm_head`` sets an instance-level
    ``forward`` whose closure holds the *patched object's* original forward, and the Trainer
    turns ``config.use_cache`` off. ``copy.deepcopy`` shares that closure (functions are
    copied by reference), so a copy of a trained policy -- what continued training
    (``dpo.reinit: false``) starts the next round from -- would run the previous policy's
    forward with the previous policy's weights whenever it is called outside fused training:
    sampling, log-probs and evaluation were a round behind. A policy rebuilt from theta0 is
    exactly what a resumed run reads back from the round's checkpoint, so an uninterrupted
    and a resumed run hold the same model."""
    model = copy.deepcopy(template)
    model.load_state_dict(trained.state_dict(), strict=True)
    model.eval()
    return model


def dpo_finetune(
    start: Any, reference: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: DPOSettings, seed: int, workdir: str | Path,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a copy of ``start`` on ``rows`` with DPO against ``reference`` (theta0).
    ``on_step(global_step)`` runs after each optimiser step (crash tests kill there).
    ``reference`` must be a model no trainer has touched (theta0): the result is a fresh
    copy of it with the trained weights (see :func:`clean_copy`).
    Returns (trained model in eval mode, metrics of the last logged step and the run).

    TRL drops a pair whose prompt alone fills ``settings.max_length`` (with the default
    keep-start truncation no completion token would be left to learn from). ``pairs_too_long``
    counts them (prompt tokens by the chat template, as TRL counts them); when every pair is
    too long nothing is trained and ``start`` comes back unchanged (TRL itself would fail on
    the empty dataset)."""
    too_long = count_too_long(tokenizer, rows, settings.max_length, str(settings.extra.get("truncation_mode", "keep_start")))
    if rows and too_long == len(rows):
        log.warning("DPO: all %d pairs have a prompt of at least max_length=%s tokens; nothing to train on", len(rows), settings.max_length)
        return clean_copy(reference, start), {"steps": 0, "pairs": len(rows), "pairs_too_long": too_long,
                                               "note": "every prompt fills max_length: policy unchanged"}
    datasets = require("datasets")
    transformers = require("transformers")
    trl = require("trl")
    policy = copy.deepcopy(start)
    policy.train()
    device = str(next(start.parameters()).device)
    kwargs: dict[str, Any] = dict(
        output_dir=str(workdir),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        max_length=settings.max_length,
        seed=seed,
        data_seed=seed,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        # small policies: recomputing activations costs more than it saves; the reference's
        # log-probs are computed once per round instead of once per step and epoch
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
    )
    if device == "cpu":
        kwargs.update(use_cpu=True, bf16=False)
    kwargs.update(settings.extra)
    args = trl.DPOConfig(**kwargs)
    dataset = datasets.Dataset.from_list(rows)
    peft_config = None
    ref_model = copy.deepcopy(reference)
    if settings.lora is not None:
        peft = require("peft")
        lora = settings.lora
        layers: dict[str, Any] = {}
        targets = lora.target_modules
        if lora.last_layers is not None:
            total = int(policy.config.num_hidden_layers)
            layers = {"layers_to_transform": list(range(max(0, total - lora.last_layers), total))}
            if targets == "all-linear":  # peft wants names with layers_to_transform: the decoder's linear layers
                import torch

                targets = sorted({
                    name.rsplit(".", 1)[-1] for name, mod in policy.named_modules()
                    if isinstance(mod, torch.nn.Linear) and ".layers." in name
                })
        peft_config = peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM",
            **layers,
        )
        ref_model = None  # the adapter-free base (theta0) is the reference
    trainer = trl.DPOTrainer(
        model=policy, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # metrics go to the run store, not stdout
    if on_step is not None:
        trainer.add_callback(_step_callback(on_step))
    trainer.train()
    trained = trainer.model
    if settings.lora is not None:
        trained = trained.merge_and_unload()
    trained = clean_copy(reference, trained)
    history = trainer.state.log_history
    steps = [h for h in history if "loss" in h]
    metrics: dict[str, Any] = {"steps": int(trainer.state.global_step), "pairs": len(rows), "pairs_too_long": too_long}
    if steps:
        last = steps[-1]
        metrics.update({k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and k != "step"})
        metrics["first_loss"] = float(steps[0]["loss"])
    summary = [h for h in history if "train_runtime" in h]
    if summary:
        metrics["train_runtime_s"] = float(summary[-1]["train_runtime"])
    del trainer
    return trained, metrics
