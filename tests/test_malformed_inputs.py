"""Malformed inputs through the CLI (issue 18, part 3): pools (JSONL, Parquet, a features
.npy), prompt files and YAML configs, each broken in one way. Every case must end in exit code
2 with exactly one `error:` line that names the file, the line or row, and the field, no
traceback, and no run directory left behind. A hypothesis test then breaks random fields of
random valid pools the same way, at the reader."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from activepref.cli import app
from activepref.errors import PoolFormatError
from activepref.pools.reader import read_pool

runner = CliRunner()
TINY = "enn: {heads: 2, hidden: 8, steps: 2}\nbatch_size: 2\niterations: 1\n"


def rows(n_prompts: int = 3, per_prompt: int = 2, dim: int = 3) -> list[dict[str, Any]]:
    out = []
    for p in range(n_prompts):
        for r in range(per_prompt):
            out.append({"prompt_id": f"p{p}", "prompt": f"question {p}?", "response_id": f"p{p}-r{r}", "model": f"m{r}",
                        "response": f"answer {r} to {p}", "score": float(r), "features": [0.1 * (p + r + k) for k in range(dim)]})
    return out


def jsonl(data: list[Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in data)


@dataclass
class Case:
    name: str
    write: Callable[[Path], list[str]]  # writes the input under the folder, returns the CLI args (without --out)
    needles: tuple[str, ...]  # what the error line must name besides the file


def pool_case(name: str, mutate: Callable[[list[dict[str, Any]]], Any], *needles: str, raw: bytes | None = None) -> Case:
    def write(folder: Path) -> list[str]:
        path = folder / "pool.jsonl"
        data = rows()
        result = mutate(data)
        path.write_bytes(raw if raw is not None else (result if isinstance(result, bytes) else jsonl(data)))
        return ["--pool", str(path)]

    return Case(name, write, needles)


def setter(index: int, field: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(data: list[dict[str, Any]]) -> None:
        if value is DROP:
            del data[index][field]
        else:
            data[index][field] = value

    return mutate


DROP = object()


def raw_line(index: int, line: bytes) -> Callable[[list[dict[str, Any]]], bytes]:
    def mutate(data: list[dict[str, Any]]) -> bytes:
        lines = jsonl(data).splitlines(keepends=True)
        lines[index] = line + b"\n"
        return b"".join(lines)

    return mutate


def parquet_case(name: str, table: Callable[[], pa.Table], *needles: str, suffix: str = ".parquet") -> Case:
    def write(folder: Path) -> list[str]:
        path = folder / f"pool{suffix}"
        pq.write_table(table(), path)
        return ["--pool", str(path)]

    return Case(name, write, needles)


def table_of(data: list[dict[str, Any]]) -> pa.Table:
    keys = list(dict.fromkeys(k for r in data for k in r))  # every row's keys (from_pylist reads the first row's only)
    return pa.table({k: [r.get(k) for r in data] for k in keys})


def with_rows(mutate: Callable[[list[dict[str, Any]]], None]) -> Callable[[], pa.Table]:
    def build() -> pa.Table:
        data = rows()
        mutate(data)
        return table_of(data)

    return build


def npy_case(name: str, array: Callable[[], Any], *needles: str, text: bytes | None = None) -> Case:
    def write(folder: Path) -> list[str]:
        data = rows()
        for row in data:
            del row["features"]
        (folder / "pool.jsonl").write_bytes(jsonl(data))
        path = folder / "features.npy"
        if text is not None:
            path.write_bytes(text)
        else:
            np.save(path, array())
        return ["--pool", str(folder / "pool.jsonl"), "--features", str(path)]

    return Case(name, write, needles)


def prompts_case(name: str, content: bytes, *needles: str) -> Case:
    def write(folder: Path) -> list[str]:
        (folder / "prompts.jsonl").write_bytes(content)
        config = folder / "live.yaml"
        config.write_text(
            TINY + f"prompts: {folder / 'prompts.jsonl'}\n"
            "generation: {models: [{name: g, backend: openai, model: gen, base_url: 'http://127.0.0.1:9/v1'}]}\n"
            "embedding: {backend: sentence_transformers, model: all-MiniLM-L6-v2}\n"
            "judge: {kind: likert, model: {backend: openai, model: j, base_url: 'http://127.0.0.1:9/v1'}}\n",
            encoding="utf-8",
        )
        return ["-c", str(config)]

    return Case(name, write, needles)


def config_case(name: str, text: str, *needles: str, pool: bool = True) -> Case:
    def write(folder: Path) -> list[str]:
        (folder / "pool.jsonl").write_bytes(jsonl(rows()))
        path = folder / "bad.yaml"
        path.write_text(text, encoding="utf-8")
        return ["-c", str(path), *(["--pool", str(folder / "pool.jsonl")] if pool else [])]

    return Case(name, write, needles)


def messages(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "content": f"{r} says hi"} for r in roles]


def parquet_bytes(data: list[dict[str, Any]]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table_of(data), sink)
    return sink.getvalue().to_pybytes()


def two_pools_bytes() -> bytes:
    data = rows()
    data[3]["features"] = [0.5, 0.5]  # a shorter vector on line 4
    return jsonl(data)


CASES = [
    # -- JSONL pools: missing, wrong-typed and empty fields (line 2 is data[1])
    *(pool_case(f"missing {f}", setter(1, f, DROP), "line 2", f) for f in ("prompt_id", "prompt", "response_id", "model", "response")),
    pool_case("prompt_id a number", setter(1, "prompt_id", 5), "line 2", "prompt_id"),
    pool_case("prompt_id empty", setter(1, "prompt_id", ""), "line 2", "prompt_id"),
    pool_case("model blank", setter(1, "model", "   "), "line 2", "model"),
    pool_case("response_id empty", setter(1, "response_id", ""), "line 2", "response_id"),
    pool_case("response a list", setter(1, "response", ["a", "b"]), "line 2", "response"),
    pool_case("prompt a number", setter(1, "prompt", 42), "line 2", "prompt"),
    pool_case("prompt an empty message list", setter(1, "prompt", []), "line 2", "prompt"),
    pool_case("messages end with the assistant", setter(1, "prompt", messages("user", "assistant")), "line 2", "prompt"),
    pool_case("message with an unknown role", setter(1, "prompt", messages("robot")), "line 2", "prompt", "'user'"),
    pool_case("message without content", setter(1, "prompt", [{"role": "user"}]), "line 2", "prompt.0.content"),
    pool_case("principle a number", setter(1, "principle", 7), "line 2", "principle"),
    pool_case("score a word", setter(1, "score", "high"), "line 2", "score"),
    pool_case("score NaN", raw_line(1, b'{"prompt_id": "p0", "prompt": "question 0?", "response_id": "p0-r1", "model": "m1", '
                                        b'"response": "a", "score": NaN, "features": [0.1, 0.2, 0.3]}'), "line 2", "score"),
    pool_case("score Infinity", raw_line(1, b'{"prompt_id": "p0", "prompt": "question 0?", "response_id": "p0-r1", "model": "m1", '
                                             b'"response": "a", "score": Infinity, "features": [0.1, 0.2, 0.3]}'), "line 2", "score"),
    pool_case("oracle -Infinity", raw_line(1, b'{"prompt_id": "p0", "prompt": "question 0?", "response_id": "p0-r1", "model": "m1", '
                                               b'"response": "a", "oracle": -Infinity, "features": [0.1, 0.2, 0.3]}'), "line 2", "oracle"),
    pool_case("features a string", setter(1, "features", "0.1 0.2 0.3"), "line 2", "features"),
    pool_case("features with a word", setter(1, "features", [0.1, "x", 0.3]), "line 2", "features"),
    pool_case("features NaN", raw_line(1, b'{"prompt_id": "p0", "prompt": "question 0?", "response_id": "p0-r1", "model": "m1", '
                                           b'"response": "a", "features": [0.1, NaN, 0.3]}'), "line 2", "features"),
    pool_case("features overflow to inf", raw_line(1, b'{"prompt_id": "p0", "prompt": "question 0?", "response_id": "p0-r1", '
                                                       b'"model": "m1", "response": "a", "features": [0.1, 1e400, 0.3]}'), "line 2", "features"),
    pool_case("features empty", setter(1, "features", []), "line 2", "features"),
    pool_case("features of mixed lengths", lambda data: two_pools_bytes(), "line 4", "features"),
    pool_case("features missing on one row", setter(2, "features", DROP), "line 3", "features"),
    pool_case("duplicate response id", setter(1, "response_id", "p0-r0"), "line 2", "response_id"),
    pool_case("one prompt id, two texts", setter(1, "prompt", "another question?"), "line 2", "prompt"),
    pool_case("invalid JSON", raw_line(2, b'{"prompt_id": "p1",,}'), "line 3", "invalid JSON"),
    pool_case("a JSON array line", raw_line(2, b"[1, 2, 3]"), "line 3", "JSON object"),
    pool_case("a JSON string line", raw_line(2, b'"just text"'), "line 3", "JSON object"),
    pool_case("invalid UTF-8", raw_line(2, b'{"prompt_id": "p\xff\xfe"}'), "line 3", "UTF-8"),
    pool_case("a 10 MB line cut short", raw_line(2, b'{"prompt_id": "p1", "response": "' + b"x" * 10_000_000), "line 3", "invalid JSON"),
    pool_case("empty file", lambda data: b"", "file"),
    pool_case("only blank lines", lambda data: b"\n\n   \n", "file"),
    pool_case("a Parquet file named .jsonl", lambda data: parquet_bytes(data), "line 1", "Parquet"),
    # -- Parquet pools
    parquet_case("parquet missing response", with_rows(lambda d: [r.pop("response") for r in d]), "row 0", "response"),
    parquet_case("parquet score strings", with_rows(lambda d: [r.update(score="high") for r in d]), "row 0", "score"),
    parquet_case("parquet features with a null row", with_rows(lambda d: d[2].update(features=None)), "row 2", "features"),
    parquet_case("parquet features of mixed lengths", with_rows(lambda d: d[4].update(features=[1.0, 2.0])), "row 4", "features"),
    parquet_case("parquet features as strings", with_rows(lambda d: [r.update(features=["a", "b", "c"]) for r in d]), "row 0", "features"),
    parquet_case("parquet NaN feature", with_rows(lambda d: d[3].update(features=[0.1, math.nan, 0.2])), "row 3", "features"),
    parquet_case("parquet empty prompt id", with_rows(lambda d: d[1].update(prompt_id="")), "row 1", "prompt_id"),
    Case("corrupt parquet", lambda folder: ((folder / "pool.parquet").write_bytes(b"PAR1 this is not parquet PAR1"),
                                            ["--pool", str(folder / "pool.parquet")])[1], ("file", "Parquet")),
    Case("unknown extension", lambda folder: ((folder / "pool.txt").write_text("x"), ["--pool", str(folder / "pool.txt")])[1],
         ("file",)),
    Case("missing pool file", lambda folder: ["--pool", str(folder / "nowhere.jsonl")], ("file", "does not exist")),
    # -- a features .npy next to the pool
    npy_case("npy with too few rows", lambda: np.zeros((4, 3), dtype=np.float32), "features", "expected (6"),
    npy_case("npy with NaN", lambda: np.full((6, 3), np.nan, dtype=np.float32), "features", "NaN"),
    npy_case("npy of integers", lambda: np.zeros((6, 3), dtype=np.int64), "dtype"),
    npy_case("npy that is not an npy", lambda: None, "features.npy", text=b"hello, not numpy"),
    # -- prompt files of live runs
    prompts_case("prompt row without a prompt", b'{"prompt_id": "a"}\n', "line 1", "prompt"),
    prompts_case("empty prompt string", b'{"prompt": "   "}\n', "line 1", "prompt"),
    prompts_case("duplicate prompt id", b'{"prompt_id": "a", "prompt": "x"}\n{"prompt_id": "a", "prompt": "y"}\n', "line 2", "prompt_id"),
    prompts_case("messages ending with the assistant", json.dumps({"messages": messages("user", "assistant")}).encode() + b"\n",
                 "line 1", "messages"),
    prompts_case("turns not a list", b'{"turns": "first turn"}\n', "line 1", "turns"),
    prompts_case("prompts invalid JSON", b'{"prompt": "x"\n', "line 1", "invalid JSON"),
    prompts_case("prompts invalid UTF-8", b'{"prompt": "\xc3\x28"}\n', "line 1", "UTF-8"),
    prompts_case("prompts file empty", b"", "file"),
    # -- YAML configs
    config_case("batch_size a word", TINY + "batch_size: ten\n", "batch_size"),
    config_case("batch_size negative", TINY + "batch_size: -1\n", "batch_size"),
    config_case("enn lr zero", TINY.replace("steps: 2}", "steps: 2, lr: 0}"), "enn.lr"),
    config_case("a key given twice", TINY + "enn: {lr: 0.1}\n", "line 4", "duplicate key 'enn'"),
    config_case("unknown field", TINY + "batchsize: 3\n", "batchsize"),
    config_case("unknown method", TINY + "method: best_method\n", "method"),
    config_case("routed without share or count", TINY + "judge: {kind: routed, options: {judge: replay}}\n", "share"),
    config_case("human labels_per_pair 0", TINY + "judge: {kind: human, options: {labels_per_pair: 0}}\n", "labels_per_pair"),
    config_case("YAML syntax error", TINY + "enn: {heads: 2\n", "bad.yaml"),
    config_case("a list, not a mapping", "- a\n- b\n", "mapping"),
    config_case("beta not a number", TINY + "beta: .nan\n", "beta"),
    config_case("seed a float", TINY + "seed: 1.5\n", "seed"),
]


def test_there_are_at_least_fifty_distinct_cases():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) >= 50


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_malformed_input_is_one_line_exit_2_and_leaves_no_run(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    args = case.write(folder)
    out = tmp_path / "out" / "run"
    result = runner.invoke(app, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:], repr(result.exception))
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output[-2000:]
    line = errors[0]
    assert f"error: {folder}/" in line, line  # the file at fault (the pool, prompts, features or config file)
    for needle in case.needles:
        assert needle in line, (needle, line)
    assert not out.exists() and not out.parent.exists() or not any(out.parent.iterdir()), "a half-created run was left"


FIELDS = ("prompt_id", "prompt", "response_id", "model", "response", "score", "oracle", "features")
BAD = {
    "prompt_id": st.sampled_from([None, 3, "", "  ", [1], {"a": 1}]),
    "prompt": st.sampled_from([None, 3, [], [{"role": "user"}], [{"role": "assistant", "content": "x"}], {"a": 1}]),
    "response_id": st.sampled_from([None, 3, "", [1]]),
    "model": st.sampled_from([None, 3, " ", [1]]),
    "response": st.sampled_from([None, 3, [1], {"a": 1}]),
    "score": st.sampled_from(["x", math.nan, math.inf, -math.inf, [1.0]]),
    "oracle": st.sampled_from(["x", math.nan, math.inf, [1.0]]),
    "features": st.one_of(
        st.sampled_from(["x", [], [1.0, "x", 2.0], [math.nan, 1.0, 1.0], [math.inf, 0.0, 0.0], [1.0, 2.0], {"a": 1}]),
        st.lists(st.floats(-1, 1), min_size=4, max_size=6),
    ),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_prompts=st.integers(1, 4), per_prompt=st.integers(1, 3), field=st.sampled_from(FIELDS), data=st.data(),
    fmt=st.sampled_from(["jsonl", "parquet"]),
)
def test_a_random_field_broken_in_a_random_pool_is_named(tmp_path_factory, n_prompts, per_prompt, field, data, fmt):
    good = rows(n_prompts, per_prompt)
    index = data.draw(st.integers(0, len(good) - 1), label="row")
    value = data.draw(BAD[field], label="value")
    if field == "features" and isinstance(value, list) and value and all(isinstance(x, float) and math.isfinite(x) for x in value):
        if len(good) == 1:
            return  # a one-row pool may have any dimension: nothing to disagree with
    good[index][field] = value
    path = tmp_path_factory.mktemp("fuzz") / f"pool.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b"".join(json.dumps(r, allow_nan=True).encode() + b"\n" for r in good))
        where = f"line {index + 1}"
    else:
        keys = list(dict.fromkeys(k for r in good for k in r))  # every row's keys (from_pylist reads the first row's only)
        try:
            pq.write_table(pa.table({k: [r.get(k) for r in good] for k in keys}), path)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            return  # a value Parquet cannot even hold in one column with the others
        where = "row"
    with pytest.raises(PoolFormatError) as info:
        read_pool(path)
    message = str(info.value)
    if "as on the first row" in message:  # a length that differs: the first row set the expected one, either may be off
        where = "line " if fmt == "jsonl" else "row"
    assert message.startswith(str(path)) and where in message, message
    assert info.value.field is None or info.value.field.split(".")[0] in FIELDS + ("role", "content"), message
