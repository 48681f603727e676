"""The export contract: a TRL preference dataset that `datasets` loads and TRL trains on.

The TRL checks build a word-level tokenizer and a tiny random Llama in code (no hub access)
and run two optimisation steps of DPOTrainer (and RewardTrainer) on the exported files.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_fixtures import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from typer.testing import CliRunner

from activepref.cli import app
from activepref.config import load_config
from activepref.core import runs
from activepref.core.export import COLUMNS, export_run
from activepref.pools.sources import synthetic_pool

EXPECTED_COLUMNS = [
    "prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected",
    "model_chosen", "model_rejected", "method", "iteration", "response_id_chosen", "response_id_rejected",
    "judged_by", "annotators", "votes",
]
SYSTEM = "You are a careful assistant."
N_PROMPTS = 16


def conversation_of(p: int, text: str) -> list[dict[str, str]]:
    """Even prompts carry a system turn; odd prompts are plain strings in the pool file."""
    user = {"role": "user", "content": text}
    return [{"role": "system", "content": SYSTEM}, user] if p % 2 == 0 else [user]


@pytest.fixture(scope="module")
def pool_info(tmp_path_factory):
    """A JSONL pool mixing chat-message and plain prompts; returns (dir, {response text: row})."""
    d = tmp_path_factory.mktemp("export")
    pool = synthetic_pool(n_prompts=N_PROMPTS, candidates=4, dim=6, seed=1, min_candidates=3)
    by_text = {}
    with open(d / "pool.jsonl", "w", encoding="utf-8") as fh:
        for i, r in enumerate(pool.responses):
            p = int(pool.prompt_index[i])
            text = pool.prompts[p].text
            row = {
                "prompt_id": pool.prompts[p].id,
                "prompt": conversation_of(p, text) if p % 2 == 0 else text,
                "response_id": r.id, "model": r.model, "response": r.text,
                "score": float(pool.scores[i]), "oracle": float(pool.oracle[i]),
                "features": [float(v) for v in pool.features[i]],
            }
            by_text[r.text] = {**row, "prompt_idx": p, "prompt_text": text}
            fh.write(json.dumps(row) + "\n")
    return d, by_text


@pytest.fixture(scope="module")
def run_dir(pool_info):
    d, _ = pool_info
    cfg = load_config(None, {
        "pool": str(d / "pool.jsonl"), "method": "dts", "batch_size": 6, "iterations": 2, "seed": 0,
        "enn.heads": 4, "enn.hidden": 8, "enn.steps": 5,
    })
    out = d / "run"
    history = runs.run(cfg, out)
    assert len(history) == 2
    return out


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    """Every (format, standard) export of the run, written once."""
    d = tmp_path_factory.mktemp("exports")
    paths = {}
    for fmt in ("jsonl", "parquet"):
        for standard in (False, True):
            path = d / f"{'standard' if standard else 'conversational'}.{fmt}"
            n = export_run(run_dir, path, fmt, standard)
            assert n == runs.status(run_dir).pairs
            paths[fmt, standard] = path
    return paths


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the format -----------------------------------------------------------------------------


def test_columns(exports):
    assert list(COLUMNS) == EXPECTED_COLUMNS
    for (fmt, _), path in exports.items():
        if fmt == "jsonl":
            for row in read_jsonl(path):
                assert list(row) == EXPECTED_COLUMNS
        else:
            assert pq.read_schema(path).names == EXPECTED_COLUMNS


def test_row_count_matches_the_run(run_dir, exports):
    st = runs.status(run_dir)
    assert st.pairs == 12  # 2 iterations x 6 prompts, one pair each
    for path in exports.values():
        n = len(read_jsonl(path)) if path.suffix == ".jsonl" else pq.read_table(path).num_rows
        assert n == 12


def test_conversational_by_default(exports, pool_info):
    _, by_text = pool_info
    rows = read_jsonl(exports["jsonl", False])
    assert {r["method"] for r in rows} == {"dts"}
    assert sorted({r["iteration"] for r in rows}) == [0, 1]
    for r in rows:
        assert r["prompt"][-1]["role"] == "user"
        assert len(r["chosen"]) == 1
        assert len(r["rejected"]) == 1
        assert r["chosen"][0]["role"] == "assistant"
        assert r["rejected"][0]["role"] == "assistant"
        assert set(r["chosen"][0]) == {"role", "content"}
        chosen = by_text[r["chosen"][0]["content"]]
        rejected = by_text[r["rejected"][0]["content"]]
        assert chosen["prompt_id"] == rejected["prompt_id"] == r["prompt_id"]
        assert chosen["response_id"] != rejected["response_id"]
        assert r["prompt"] == conversation_of(chosen["prompt_idx"], chosen["prompt_text"])
        assert (r["model_chosen"], r["model_rejected"]) == (chosen["model"], rejected["model"])
        assert (r["score_chosen"], r["score_rejected"]) == (chosen["score"], rejected["score"])
    # the pool mixes both prompt kinds, and both made it into the export
    assert {len(r["prompt"]) for r in rows} == {1, 2}


def test_standard_is_plain_strings(exports, pool_info):
    _, by_text = pool_info
    conv = read_jsonl(exports["jsonl", False])
    std = read_jsonl(exports["jsonl", True])
    assert len(std) == len(conv)
    for s, c in zip(std, conv):
        assert s["prompt"] == c["prompt"][-1]["content"]  # the user turn; the system turn is dropped
        assert s["chosen"] == c["chosen"][0]["content"]
        assert s["rejected"] == c["rejected"][0]["content"]
        assert by_text[s["chosen"]]["prompt_text"] == s["prompt"]
        assert {k: v for k, v in s.items() if k not in ("prompt", "chosen", "rejected")} == {
            k: v for k, v in c.items() if k not in ("prompt", "chosen", "rejected")
        }


def test_standard_flag_on_the_command_line(run_dir, exports, tmp_path):
    result = CliRunner().invoke(app, ["export", str(run_dir), "--standard", "--format", "jsonl", "-o", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.jsonl").read_bytes() == exports["jsonl", True].read_bytes()


def test_chosen_scores_higher_for_annotated_pairs(exports):
    rows = read_jsonl(exports["jsonl", False])
    for r in rows:
        assert isinstance(r["score_chosen"], float)
        assert isinstance(r["score_rejected"], float)
        assert r["score_chosen"] > r["score_rejected"]


@pytest.mark.parametrize("standard", [False, True])
def test_parquet_matches_jsonl(exports, standard):
    assert pq.read_table(exports["parquet", standard]).to_pylist() == read_jsonl(exports["jsonl", standard])


def test_parquet_types(exports):
    schema = pq.read_schema(exports["parquet", False])
    prompt_type = schema.field("prompt").type
    assert pa.types.is_list(prompt_type)
    assert prompt_type.value_type == pa.struct([("role", pa.string()), ("content", pa.string())])
    assert str(schema.field("score_chosen").type) == "double"
    assert str(schema.field("iteration").type) == "int64"
    assert str(pq.read_schema(exports["parquet", True]).field("prompt").type) == "string"


def test_export_replaces_atomically(run_dir, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("old content\n")
    export_run(run_dir, path, "jsonl")
    assert "old content" not in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]  # no .tmp left behind


def test_unknown_format_raises(run_dir, tmp_path):
    with pytest.raises(ValueError):
        export_run(run_dir, tmp_path / "x.csv", "csv")  # type: ignore[arg-type]


# -- datasets + TRL -----------------------------------------------------------------------------


@pytest.fixture
def torch():
    """The TRL checks need the optional training stack; skip them (only them) without it."""
    pytest.importorskip("trl")
    pytest.importorskip("transformers")
    return pytest.importorskip("torch")

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def load(path: Path, cache: Path):
    datasets = pytest.importorskip("datasets")
    kind = "json" if path.suffix == ".jsonl" else "parquet"
    return datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(cache))


def _texts(value) -> list[str]:
    return [value] if isinstance(value, str) else [t for m in value for t in (m["role"], m["content"])]


def word_tokenizer(dataset):
    """A word-level fast tokenizer whose vocabulary is every word of the dataset plus specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = {"user", "assistant", "system", ":"}
    for row in dataset:
        for col in ("prompt", "chosen", "rejected"):
            for text in _texts(row[col]):
                words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def llama_config(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra,
    )


def train_args(kind: str, out: Path):
    from trl import DPOConfig, RewardConfig

    cls = DPOConfig if kind == "dpo" else RewardConfig
    return cls(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, use_cpu=True, report_to=[],
               logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)


@pytest.mark.parametrize(("fmt", "standard"), [("jsonl", False), ("parquet", False), ("parquet", True)])
def test_load_dataset(exports, tmp_path, fmt, standard):
    ds = load(exports[fmt, standard], tmp_path / "hf")
    assert ds.column_names == EXPECTED_COLUMNS
    assert ds.num_rows == 12
    first = ds[0]
    if standard:
        assert isinstance(first["prompt"], str)
    else:
        assert first["prompt"][-1]["role"] == "user"
        assert first["chosen"] == [{"role": "assistant", "content": first["chosen"][0]["content"]}]


def test_chat_template_covers_the_export(exports, tmp_path, torch):
    ds = load(exports["jsonl", False], tmp_path / "hf")
    tok = word_tokenizer(ds)
    for row in ds:
        text = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
        assert text.endswith("</s> ")
        assert tok.unk_token_id not in tok(text)["input_ids"]
    prompt = tok.apply_chat_template(ds[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("assistant : ")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations inside TRL
@pytest.mark.parametrize(("fmt", "standard"), [("jsonl", False), ("parquet", True)])
def test_dpo_trainer_two_steps(exports, tmp_path, fmt, standard, torch):
    from transformers import LlamaForCausalLM
    from trl import DPOTrainer

    ds = load(exports[fmt, standard], tmp_path / "hf")
    tok = word_tokenizer(ds)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(llama_config(tok))
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=train_args("dpo", tmp_path / "dpo"),
                         train_dataset=ds, processing_class=tok)
    out = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(out.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2
    assert all(np.isfinite(losses))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_reward_trainer_two_steps(exports, tmp_path, torch):
    from transformers import LlamaForSequenceClassification
    from trl import RewardTrainer

    ds = load(exports["parquet", False], tmp_path / "hf")
    tok = word_tokenizer(ds)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(llama_config(tok, num_labels=1))
    trainer = RewardTrainer(model=model, args=train_args("reward", tmp_path / "rm"), train_dataset=ds, processing_class=tok)
    out = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(out.training_loss)


def test_cli_format_follows_the_file_name(run_dir, tmp_path):
    """`export -o x.jsonl` writes JSON lines (it wrote Parquet bytes into a .jsonl once);
    --format still wins when given."""
    for name, magic in (("d.jsonl", b"{"), ("d.json", b"{"), ("d.parquet", b"PAR1"), ("d.out", b"PAR1")):
        result = CliRunner().invoke(app, ["export", str(run_dir), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(magic), name
    result = CliRunner().invoke(app, ["export", str(run_dir), "--format", "parquet", "-o", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0 and (tmp_path / "p.jsonl").read_bytes().startswith(b"PAR1")
