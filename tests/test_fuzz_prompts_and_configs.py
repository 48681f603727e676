"""Hypothesis fuzz of prompt files and YAML configs through the CLI (issue 18, part 3).

The pool fuzz lives in test_malformed_inputs.py. Here, random valid prompt files get one row
broken in one way, and random valid run configs get one field, drawn from the config models
themselves, set to a value of the wrong type, out of its bounds, NaN/infinite, or unknown.
Every example must end as the fixed cases do: exit code 2, one ``error:`` line that names the
file and the line or field, and no run directory left behind.
"""

from __future__ import annotations

import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from activepref.cli import app
from activepref.config import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_malformed_inputs import jsonl, rows  # noqa: E402

runner = CliRunner()
TINY = {"enn": {"heads": 2, "hidden": 8, "steps": 2}, "batch_size": 2, "iterations": 1}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _invoke_run(args: list[str], out: Path) -> str:
    """`activepref run ARGS --out OUT` must fail as a malformed input does; returns the error line."""
    result = runner.invoke(app, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:], repr(result.exception))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output[-2000:]
    assert not out.exists(), "a half-created run was left"
    return errors[0]


# ---------------------------------------------------------------- prompt files

def _messages(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "content": f"{r} text"} for r in roles]


GOOD_PROMPT = st.one_of(
    st.builds(lambda t: {"prompt": t}, st.text(min_size=1, max_size=20).filter(str.strip)),
    st.just({"prompt": _messages("system", "user")}),
    st.just({"messages": _messages("user", "assistant", "user")}),
    st.just({"turns": ["first turn", "second turn"]}),
)
# (what the row becomes, the field the error must name)
BROKEN_PROMPT = st.sampled_from([
    ({"prompt_id": "x"}, "prompt"),  # no prompt at all
    ({"prompt": ""}, "prompt"),
    ({"prompt": "  \t "}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": None, "messages": None}, "prompt"),
    ({"prompt": {"role": "user"}}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": _messages("user", "assistant")}, "prompt"),  # ends with the answer
    ({"prompt": _messages("robot")}, "prompt"),
    ({"prompt": [{"role": "user"}]}, "prompt.0.content"),
    ({"prompt": [{"role": "user", "content": 3}]}, "prompt.0.content"),
    ({"messages": "hello"}, "messages"),
    ({"messages": _messages("assistant")}, "messages"),
    ({"turns": "one turn"}, "turns"),
    ({"turns": [1, 2]}, "turns.0"),
    ({"prompt": "fine", "prompt_id": 7}, "prompt_id"),
    ({"prompt": "fine", "prompt_id": ["a"]}, "prompt_id"),
    ({"prompt": "fine", "instructions": "{not json"}, "instructions"),
])
RAW_LINES = st.sampled_from([
    (b'{"prompt": "x"', "invalid JSON"),
    (b'{"prompt": "\xff\xfe"}', "UTF-8"),
    (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"),
    (b'{"prompt": "' + b"y" * 10_000_000, "invalid JSON"),  # a 10 MB line cut short
])


def _live_config(folder: Path, prompts: Path) -> Path:
    config = folder / "live.yaml"
    config.write_text(yaml.safe_dump({
        **TINY, "prompts": str(prompts),
        "generation": {"models": [{"name": "g", "backend": "openai", "model": "gen", "base_url": "http://127.0.0.1:9/v1"}]},
        "embedding": {"backend": "sentence_transformers", "model": "all-MiniLM-L6-v2"},
        "judge": {"kind": "likert", "model": {"backend": "openai", "model": "j", "base_url": "http://127.0.0.1:9/v1"}},
    }), encoding="utf-8")
    return config


@FUZZ
@given(good=st.lists(GOOD_PROMPT, min_size=1, max_size=6, unique_by=lambda r: json.dumps(r, sort_keys=True)), data=st.data(),
       with_ids=st.booleans())
def test_a_random_prompt_row_broken_in_a_random_file_is_named(tmp_path_factory, good, data, with_ids):
    folder = tmp_path_factory.mktemp("prompts")
    rows = [dict(r, prompt_id=f"q{i}") if with_ids else dict(r) for i, r in enumerate(good)]
    index = data.draw(st.integers(0, len(rows)), label="row")  # len(rows): a row appended at the end
    kind = data.draw(st.sampled_from(["field", "raw", "duplicate id"]), label="kind")
    lines = [json.dumps(r).encode() for r in rows]
    if kind == "field":
        row, field = data.draw(BROKEN_PROMPT, label="broken")
        lines.insert(index, json.dumps(row).encode())
        needles = (f"line {index + 1}", field)
    elif kind == "raw":
        raw, needle = data.draw(RAW_LINES, label="raw")
        lines.insert(index, raw)
        needles = (f"line {index + 1}", needle)
    else:
        first = data.draw(st.integers(0, len(rows) - 1), label="first")
        if with_ids:  # an id given twice
            lines.append(json.dumps({"prompt_id": rows[first]["prompt_id"], "prompt": "another text"}).encode())
            needles = (f"line {len(lines)}", "prompt_id", f"line {first + 1}")
        else:  # the same prompt twice, without ids (the id would be its content hash)
            lines.append(json.dumps(rows[first]).encode())
            needles = (f"line {len(lines)}", "prompt", f"same prompt as line {first + 1}")
    prompts = folder / "prompts.jsonl"
    prompts.write_bytes(b"\n".join(lines) + b"\n")
    line = _invoke_run(["-c", str(_live_config(folder, prompts))], folder / "out" / "run")
    assert line.startswith(f"error: {prompts}"), line
    for needle in needles:
        assert needle in line, (needle, line)


# ---------------------------------------------------------------- YAML configs

SKIPPED = {"prices", "generation", "embedding", "method_options", "judge.options", "engine.options"}
# judge.model is optional; the fuzz's base config gives one, so its fields are fuzzed too.
OPTIONAL_SECTIONS = {"judge.model"}


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def config_leaves(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, Any, list[Any]]]:
    """(dotted field, annotation, metadata) of every scalar field of the run config that the
    fuzz breaks, walking into nested sections."""
    out = []
    for name, info in model.model_fields.items():
        dotted = prefix + name
        if dotted in SKIPPED:
            continue
        annotation = _strip_optional(info.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation is not info.annotation and dotted not in OPTIONAL_SECTIONS:
                continue
            out.append((dotted, "section", []))
            out.extend(config_leaves(annotation, dotted + "."))
        else:
            out.append((dotted, annotation, list(info.metadata)))
    return out


def bad_values(annotation: Any, metadata: list[Any]) -> list[Any]:
    """Values the field must refuse: the wrong type, its bounds overstepped, NaN/inf."""
    if annotation == "section":
        return ["a string", 3, [1, 2]]
    if typing.get_origin(annotation) is typing.Literal:
        return ["no-such-choice", 3, [1]]
    wrong = [{"a": 1}, [1]]
    if annotation is bool:
        return [*wrong, "maybe", 2, 0.5]
    if annotation is str:
        return [*wrong, 3, 1.5, True]
    if annotation in (int, float):
        values = [*wrong, "ten", ""] + ([1.5, math.nan, math.inf] if annotation is int else [math.nan, math.inf, -math.inf])
        for m in metadata:
            if isinstance(m, at.Ge):
                values.append(m.ge - 1)
            elif isinstance(m, at.Gt):
                values.append(m.gt)
            elif isinstance(m, at.Le):
                values.append(m.le + 1)
            elif isinstance(m, at.Lt):
                values.append(m.lt)
        return values
    raise AssertionError(f"the fuzz has no bad values for {annotation!r}: add them")


LEAVES = config_leaves()


def test_the_config_fuzz_covers_every_section():
    names = {dotted for dotted, _, _ in LEAVES}
    for field in ("batch_size", "seed", "beta", "enn.lr", "enn.heads", "judge.kind", "judge.mode", "judge.batch.poll_interval_s",
                  "judge.model.timeout_s", "budget.max_usd", "engine.kind", "eval_fraction", "cross_prompt"):
        assert field in names, field
    assert all(bad_values(a, m) for _, a, m in LEAVES)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def _base_config(pool: Path) -> dict[str, Any]:
    return {
        **json.loads(json.dumps(TINY)), "pool": str(pool), "method": "drts", "seed": 1, "eval_fraction": 0.2,
        "judge": {"kind": "likert", "max_retries": 1,
                  "model": {"backend": "openai", "model": "j", "base_url": "http://127.0.0.1:9/v1", "timeout_s": 5}},
        "budget": {"max_judge_calls": 100}, "engine": {"kind": "local"},
    }


def _write_pool(folder: Path) -> Path:
    pool = folder / "pool.jsonl"
    pool.write_bytes(jsonl(rows()))  # the valid pool of the fixed malformed-input cases
    return pool


def test_the_fuzz_base_config_is_valid(tmp_path):
    from activepref.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_base_config(_write_pool(tmp_path))), encoding="utf-8")
    load_config(path)


@FUZZ
@given(leaf=st.sampled_from(LEAVES), data=st.data())
def test_a_random_config_field_set_wrong_is_named(tmp_path_factory, leaf, data):
    dotted, annotation, metadata = leaf
    folder = tmp_path_factory.mktemp("config")
    config = _base_config(_write_pool(folder))
    value = data.draw(st.sampled_from(bad_values(annotation, metadata)), label="value")
    _set(config, dotted, value)
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    line = _invoke_run(["-c", str(path)], folder / "out" / "run")
    assert line.startswith(f"error: {path}"), line
    assert dotted in line, (dotted, value, line)


SECTIONS = [""] + [dotted + "." for dotted, annotation, _ in LEAVES if annotation == "section"]


@FUZZ
@given(section=st.sampled_from(SECTIONS), key=st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True))
def test_an_unknown_field_in_any_section_is_named(tmp_path_factory, section, key):
    known = {d for d, _, _ in LEAVES} | SKIPPED | {"preset"}
    if section + key in known:
        return
    folder = tmp_path_factory.mktemp("config")
    config = _base_config(_write_pool(folder))
    _set(config, section + key, 1)
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    line = _invoke_run(["-c", str(path)], folder / "out" / "run")
    assert line.startswith(f"error: {path}") and f"{section}{key}: unknown field" in line, line


@pytest.mark.parametrize("text, needle", [
    ("batch_size: 2\nseed: 1\nbatch_size: 4\n", "duplicate key 'batch_size' (first given on line 1)"),
    ("enn: {lr: 0.1}\niterations: 1\nenn: {steps: 3}\n", "duplicate key 'enn'"),
    ("enn:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'"),
    ("enn: {lr: 0.1, steps: 2, lr: 0.2}\n", "duplicate key 'lr' (first given on line 1)"),  # both on one line
    ("batch_size: 2\n\tseed: 1\n", "line 2"),
    ("batch_size: [2\n", "line 2"),
])
def test_a_yaml_config_with_duplicate_keys_or_bad_syntax_is_refused(tmp_path, text, needle):
    """PyYAML keeps the last of two equal keys without a word: the config reader refuses them."""
    path = tmp_path / "dup.yaml"
    path.write_text(text + f"pool: {_write_pool(tmp_path)}\n", encoding="utf-8")
    line = _invoke_run(["-c", str(path)], tmp_path / "out" / "run")
    assert line.startswith(f"error: {path}") and needle in line, line


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"method: caf\xe9\n")
    line = _invoke_run(["-c", str(path)], tmp_path / "out" / "run")
    assert line.startswith(f"error: {path}") and "UTF-8" in line, line


def test_bench_refuses_a_duplicate_key_too(tmp_path):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("enn: {steps: 2}\nenn: {heads: 2}\n", encoding="utf-8")
    result = runner.invoke(app, ["bench", "--pool", str(_write_pool(tmp_path)), "--methods", "random", "--budget", "4", "-c", str(cfg),
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "duplicate key 'enn'" in result.output and str(cfg) in result.output, result.output
