"""Run every (acquisition, seed) of an APL config and write the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from activepref.apl.acquisitions import ACQUISITIONS
from activepref.apl.config import BUILTIN_PROMPTS, APLConfig
from activepref.apl.loop import APLRun, RoundResult, StageCallback, load_parts
from activepref.apl.policy import check_dpo_extra
from activepref.apl.report import write_report
from activepref.core.cache import RequestCache
from activepref.core.determinism import Stage, stage_rng
from activepref.errors import ConfigError
from activepref.pools.reader import read_prompts
from activepref.pools.records import Prompt


def load_prompt_sets(config: APLConfig) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, held-out prompts). Without ``eval_prompts``, ``eval_size`` prompts are
    split off ``prompts`` by a fixed draw (the same for every seed and acquisition)."""
    def read(source: str) -> list[Prompt]:
        if source == BUILTIN_PROMPTS:
            from activepref.live.quickstart import mtbench_questions_path

            return read_prompts(mtbench_questions_path())
        return read_prompts(source)

    prompts = read(config.prompts)
    if config.eval_prompts is not None:
        held_out = read(config.eval_prompts)
        clash = {p.id for p in held_out} & {p.id for p in prompts}
        if clash:
            raise ConfigError(f"eval_prompts shares {len(clash)} prompt ids with prompts (e.g. {sorted(clash)[0]!r})")
        return prompts, held_out
    if config.eval_size >= len(prompts):
        raise ConfigError(f"eval_size {config.eval_size} leaves no training prompt out of {len(prompts)}")
    order = stage_rng(0, 0, Stage.APL_EVAL_SPLIT).permutation(len(prompts))  # the same for every run
    held = set(int(i) for i in order[: config.eval_size])
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


def check_prompt_budget(config: APLConfig, n_train: int) -> None:
    """Refuse, before any call is paid, a config whose last round would run out of prompts:
    each round draws S prompts (J*S for hybrid) among those not labelled in earlier rounds,
    and every round labels M of them."""
    factor = config.hybrid_factor if any(ACQUISITIONS.get(a).oversample for a in config.acquisitions) else 1
    needed = (config.rounds - 1) * config.labels_per_round + config.prompts_per_round * factor
    if n_train < needed:
        raise ConfigError(
            f"{config.prompts}: {n_train} training prompts, but rounds={config.rounds}, labels_per_round={config.labels_per_round}, "
            f"prompts_per_round={config.prompts_per_round}"
            + (f", hybrid_factor={config.hybrid_factor}" if factor > 1 else "")
            + f" need at least {needed} ((rounds-1)*M + S{'*J' if factor > 1 else ''}); add prompts or lower one of these"
        )


def run_dir_for(out: Path, acquisition: str, seed: int) -> Path:
    return out / "runs" / f"{acquisition}-seed{seed}"


def run_apl(
    config: APLConfig, out: str | Path, on_stage: StageCallback | None = None,
    on_run_done: Callable[[list[RoundResult]], None] | None = None, title: str = "activepref apl",
) -> dict[str, Any]:
    """Run (or resume) every (seed, acquisition), then write results.csv, summary.md and
    winrate.png into ``out``. Returns the written paths and the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    train, held_out = load_prompt_sets(config)
    check_prompt_budget(config, len(train))
    check_dpo_extra(config.dpo)
    cache = RequestCache(config.cache_path or out / "requests.sqlite")
    try:
        parts = load_parts(config, cache)
        results: list[RoundResult] = []
        for seed in config.seeds:
            for acquisition in config.acquisitions:
                run = APLRun(parts, train, held_out, acquisition, seed, run_dir_for(out, acquisition, seed), on_stage)
                done = run.run()
                results.extend(done)
                if on_run_done is not None:
                    on_run_done(done)
        calls = {stage: cache.stats.stage(stage) for stage in ("generate", "evaluate", "judge")}
    finally:
        cache.close()
    notes = [
        f"Policy: {config.policy.label()}; judge: {config.judge.kind} with {config.judge.model.label()}; "
        f"{len(train)} training prompts, {len(held_out)} held out; S={config.prompts_per_round}, "
        f"M={config.labels_per_round}, N={config.entropy_samples}, J={config.hybrid_factor}, "
        f"DPO beta={config.dpo.beta}, lr={config.dpo.learning_rate}, epochs={config.dpo.epochs}, "
        f"{'re-initialised from theta0 each round' if config.dpo.reinit else 'continued training'}"
        f"{', LoRA' if config.dpo.lora else ''}.",
        "This invocation's requests (answered by the model / answered from the request cache / failed): "
        + "; ".join(f"{k} {v.calls} / {v.cache_hits} / {v.failures}" for k, v in calls.items())
        + ". A rerun of the same command answers everything from the cache and the run stores.",
    ]
    written = write_report(results, out, title=title, notes=notes)
    written["results_rows"] = [json.loads(json.dumps(r.__dict__, default=str)) for r in results]
    return written
