"""The candidate-pool reader (activepref.pools.reader.read_pool): formats, features, scores, errors.

Every error test checks that the message names the file, the line (JSONL, 1-based) or
row (Parquet / .npy, 0-based like pyarrow and numpy) and the field.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activepref.errors import ActivePrefError, PoolFormatError
from activepref.pools.reader import read_pool
from activepref.pools.sources import synthetic_pool, write_pool


def row(i: int, **overrides) -> dict:
    """Candidate i; two candidates per prompt (p0: r0, r1; p1: r2, r3; ...)."""
    base = {
        "prompt_id": f"p{i // 2}",
        "prompt": f"prompt number {i // 2}",
        "response_id": f"r{i}",
        "model": "model-a" if i % 2 == 0 else "model-b",
        "response": f"response number {i}",
        "score": float(i),
        "features": [float(i), 1.0, -float(i)],
    }
    base.update(overrides)
    return base


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def pool_error(*args) -> PoolFormatError:
    with pytest.raises(PoolFormatError) as info:
        read_pool(*args)
    return info.value


# -- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reads_rows_in_file_order(tmp_path, fmt):
    rows = [row(i) for i in range(6)]
    path = write_jsonl(tmp_path / "pool.jsonl", rows) if fmt == "jsonl" else write_parquet(tmp_path / "pool.parquet", rows)
    pool = read_pool(path)
    assert [r.id for r in pool.responses] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert [p.id for p in pool.prompts] == ["p0", "p1", "p2"]
    assert [p.text for p in pool.prompts] == ["prompt number 0", "prompt number 1", "prompt number 2"]
    assert pool.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert [r.model for r in pool.responses] == ["model-a", "model-b"] * 3
    assert [r.text for r in pool.responses][3] == "response number 3"
    assert pool.scores.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert pool.features.dtype == np.float32
    assert pool.features.shape == (6, 3)
    np.testing.assert_array_equal(pool.features[4], [4.0, 1.0, -4.0])
    assert pool.dim == 3
    assert pool.oracle is None
    assert pool.source == str(path)


def test_interleaved_prompts_keep_response_order(tmp_path):
    rows = [row(0), row(2), row(1), row(3)]  # p0, p1, p0, p1
    pool = read_pool(write_jsonl(tmp_path / "pool.jsonl", rows))
    assert [r.id for r in pool.responses] == ["r0", "r2", "r1", "r3"]
    assert pool.prompt_index.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(pool.features[:, 0], [0.0, 2.0, 1.0, 3.0])


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "pool.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(4):
            fh.write(json.dumps(row(i)) + "\n")
    assert [r.id for r in read_pool(path).responses] == ["r0", "r1", "r2", "r3"]


def test_blank_lines_are_skipped_and_line_numbers_still_count_them(tmp_path):
    lines = [json.dumps(row(0)), "", json.dumps(row(1)), "{not json"]
    err = pool_error(write_jsonl(tmp_path / "pool.jsonl", lines))
    assert err.location == "line 4"


def test_npy_features_follow_file_order(tmp_path):
    rows = [without(row(i), "features") for i in (0, 2, 1, 3)]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    matrix = np.arange(8, dtype=np.float64).reshape(4, 2) * 1.5
    np.save(tmp_path / "feats.npy", matrix)
    pool = read_pool(path, tmp_path / "feats.npy")
    assert [r.id for r in pool.responses] == ["r0", "r2", "r1", "r3"]
    assert isinstance(pool.features, np.memmap)  # referenced where it lies, never copied
    np.testing.assert_array_equal(np.asarray(pool.features, dtype=np.float32), matrix.astype(np.float32))


def test_npy_features_with_parquet_pool(tmp_path):
    path = write_parquet(tmp_path / "pool.parquet", [without(row(i), "features") for i in range(4)])
    np.save(tmp_path / "feats.npy", np.eye(4, dtype=np.float32))
    pool = read_pool(path, str(tmp_path / "feats.npy"))
    np.testing.assert_array_equal(pool.features, np.eye(4, dtype=np.float32))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_conversational_prompt(tmp_path, fmt):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    rows = [row(i, prompt_id="p0", prompt=messages) for i in range(2)]
    path = write_jsonl(tmp_path / "pool.jsonl", rows) if fmt == "jsonl" else write_parquet(tmp_path / "pool.parquet", rows)
    pool = read_pool(path)
    assert len(pool.prompts) == 1
    prompt = pool.prompts[0]
    assert prompt.text == "What is 2+2?"  # the last user turn
    assert prompt.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    )
    assert prompt.conversation() == messages


def test_plain_prompt_conversation_is_one_user_turn(tmp_path):
    pool = read_pool(write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1)]))
    assert pool.prompts[0].messages == ()
    assert pool.prompts[0].conversation() == [{"role": "user", "content": "prompt number 0"}]


def test_aspect_scores_average_when_score_missing(tmp_path):
    rows = [
        {**without(row(0), "score"), "score_helpfulness": 4, "score_honesty": 2.0},
        {**without(row(1), "score"), "score_helpfulness": 5, "score_truthfulness": 4,
         "score_honesty": 3, "score_instruction_following": 4},
        {**row(2, score=1.5), "score_helpfulness": 5},  # an explicit score wins
        {**without(row(3), "score")},  # no score at all
    ]
    pool = read_pool(write_jsonl(tmp_path / "pool.jsonl", rows))
    assert pool.scores[:3].tolist() == [3.0, 4.0, 1.5]
    assert math.isnan(pool.scores[3])
    assert set(pool.aspect_scores) == {"helpfulness", "truthfulness", "honesty", "instruction_following"}
    assert pool.aspect_scores["helpfulness"][:3].tolist() == [4.0, 5.0, 5.0]
    assert math.isnan(pool.aspect_scores["helpfulness"][3])
    assert math.isnan(pool.aspect_scores["truthfulness"][0])
    assert pool.aspect_scores["truthfulness"][1] == 4.0


def test_oracle_column(tmp_path):
    rows = [row(i, oracle=0.25 * i) for i in range(4)]
    pool = read_pool(write_jsonl(tmp_path / "pool.jsonl", rows))
    assert pool.oracle.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert pool.reference_reward().tolist() == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_pool_round_trip(tmp_path, suffix):
    pool = synthetic_pool(n_prompts=6, candidates=4, dim=5, seed=3, min_candidates=2)
    back = read_pool(write_pool(pool, tmp_path / f"pool{suffix}"))
    assert [r.id for r in back.responses] == [r.id for r in pool.responses]
    assert [r.model for r in back.responses] == [r.model for r in pool.responses]
    assert [p.text for p in back.prompts] == [p.text for p in pool.prompts]
    assert back.prompt_index.tolist() == list(pool.prompt_index)
    np.testing.assert_allclose(back.scores, pool.scores)
    np.testing.assert_allclose(back.oracle, pool.oracle)
    np.testing.assert_allclose(back.features, pool.features, atol=1e-6)


# -- errors: each names file, line/row and field -----------------------------------------


def test_invalid_json_line(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1), '{"prompt_id": "p1",', row(3)])
    err = pool_error(path)
    assert str(path) in str(err)
    assert "line 3" in str(err)
    assert "invalid JSON" in str(err)
    assert err.location == "line 3"


def test_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), "[1, 2]"])
    err = pool_error(path)
    assert f"{path}, line 2" in str(err)
    assert "JSON object" in str(err)


@pytest.mark.parametrize("field", ["prompt_id", "prompt", "response_id", "model", "response"])
def test_missing_required_field(tmp_path, field):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1), without(row(2), field)])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 3, field '{field}'")
    assert "Field required" in str(err)
    assert (err.path, err.location, err.field) == (str(path), "line 3", field)


def test_missing_field_in_parquet_names_row(tmp_path):
    rows = [row(0), row(1), row(2, response=None)]
    path = write_parquet(tmp_path / "pool.parquet", rows)
    err = pool_error(path)
    assert str(err).startswith(f"{path}, row 2, field 'response'")


def test_non_numeric_score(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1, score="great")])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'score'")
    assert "'great'" in str(err)


def test_nan_score(tmp_path):
    line = json.dumps(row(1)).replace('"score": 1.0', '"score": NaN')
    err = pool_error(write_jsonl(tmp_path / "pool.jsonl", [row(0), line]))
    assert (err.location, err.field) == ("line 2", "score")
    assert "finite" in str(err)


def test_non_numeric_aspect_score(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), {**row(1), "score_honesty": "high"}])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'score_honesty'")


def test_duplicate_response_id(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1), row(2), row(3, response_id="r1")])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 4, field 'response_id'")
    assert "duplicate id 'r1'" in str(err)
    assert "first at line 2" in str(err)


def test_same_prompt_id_with_different_text(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1, prompt="something else")])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'prompt'")


def test_message_list_not_ending_with_user(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    err = pool_error(write_jsonl(tmp_path / "pool.jsonl", [row(0, prompt=msgs)]))
    assert (err.location, err.field) == ("line 1", "prompt")
    assert "'user'" in str(err)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_features_length_mismatch(tmp_path, fmt):
    rows = [row(0), row(1), row(2), row(3, features=[1.0, 2.0])]
    path = write_jsonl(tmp_path / "pool.jsonl", rows) if fmt == "jsonl" else write_parquet(tmp_path / "pool.parquet", rows)
    err = pool_error(path)
    where = "line 4" if fmt == "jsonl" else "row 3"
    assert str(err).startswith(f"{path}, {where}, field 'features'")
    assert "length 2, expected 3" in str(err)


def test_nan_feature(tmp_path):
    line = json.dumps(row(1)).replace("[1.0, 1.0, -1.0]", "[1.0, NaN, -1.0]")
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), line])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'features'")
    assert "NaN" in str(err)


def test_non_numeric_feature(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), row(1, features=[1.0, "x", 0.0])])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'features.1'")


def test_features_on_some_rows_only(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(0), without(row(1), "features")])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, line 2, field 'features'")


def test_no_features_at_all(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [without(row(i), "features") for i in range(2)])
    err = pool_error(path)
    assert str(err).startswith(f"{path}, file, field 'features'")
    assert "--features" in str(err)


def test_npy_with_wrong_row_count(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [without(row(i), "features") for i in range(4)])
    np.save(tmp_path / "feats.npy", np.zeros((3, 2), dtype=np.float32))
    err = pool_error(path, tmp_path / "feats.npy")
    assert str(tmp_path / "feats.npy") in str(err)
    assert "shape (3, 2), expected (4, d)" in str(err)


def test_npy_with_nan_names_row(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [without(row(i), "features") for i in range(4)])
    matrix = np.ones((4, 2), dtype=np.float32)
    matrix[2, 1] = np.nan
    np.save(tmp_path / "feats.npy", matrix)
    err = pool_error(path, tmp_path / "feats.npy")
    assert str(err).startswith(f"{tmp_path / 'feats.npy'}, row 2")


@pytest.mark.parametrize("bad", ["rows", "nan"])
def test_npy_errors_name_the_features_field(tmp_path, bad):
    path = write_jsonl(tmp_path / "pool.jsonl", [without(row(i), "features") for i in range(4)])
    matrix = np.ones((3 if bad == "rows" else 4, 2), dtype=np.float32)
    if bad == "nan":
        matrix[2, 1] = np.nan
    np.save(tmp_path / "feats.npy", matrix)
    err = pool_error(path, tmp_path / "feats.npy")
    assert err.field == "features"
    assert "'features'" in str(err)


def test_features_column_and_npy_both_given(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [row(i) for i in range(4)])
    np.save(tmp_path / "feats.npy", np.zeros((4, 3), dtype=np.float32))
    err = pool_error(path, tmp_path / "feats.npy")
    assert str(err).startswith(f"{path}, file, field 'features'")
    assert "feats.npy" in str(err)
    assert "use one" in str(err)


def test_missing_npy_file(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [without(row(i), "features") for i in range(2)])
    err = pool_error(path, tmp_path / "nope.npy")
    assert str(err) == f"{tmp_path / 'nope.npy'}, file: does not exist"


@pytest.mark.parametrize("name", ["pool.csv", "pool.txt", "pool"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps(row(0)) + "\n")
    err = pool_error(path)
    assert str(err).startswith(f"{path}, file: unknown extension")
    assert "use .jsonl or .parquet" in str(err)


def test_missing_pool_file(tmp_path):
    err = pool_error(tmp_path / "absent.jsonl")
    assert str(err) == f"{tmp_path / 'absent.jsonl'}, file: does not exist"


def test_empty_pool(tmp_path):
    err = pool_error(write_jsonl(tmp_path / "pool.jsonl", []))
    assert str(err).endswith("file: no rows")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "pool.parquet"
    path.write_bytes(b"this is not parquet")
    err = pool_error(path)
    assert str(err).startswith(f"{path}, file: not a readable Parquet file")


def test_oracle_on_some_rows_only(tmp_path):
    err = pool_error(write_jsonl(tmp_path / "pool.jsonl", [row(0, oracle=1.0), row(1)]))
    assert err.field == "oracle"
    assert "'r1'" in str(err)


def test_pool_format_error_is_an_activepref_error():
    assert issubclass(PoolFormatError, ActivePrefError)


def _prompt_feature_rows():
    base = {"prompt": "p", "model": "m", "response": "r", "features": [0.0, 1.0]}
    return [
        {**base, "prompt_id": "a", "response_id": "a1", "prompt_features": [1.0, 2.0, 3.0]},
        {**base, "prompt_id": "a", "response_id": "a2", "prompt_features": [1.0, 2.0, 3.0]},
        {**base, "prompt_id": "b", "prompt": "q", "response_id": "b1", "prompt_features": [4.0, 5.0, 6.0]},
    ]


def test_prompt_features_are_read_once_per_prompt(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _prompt_feature_rows()))
    pool = read_pool(path)
    assert pool.prompt_features.dtype == np.float32
    assert pool.prompt_features.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "prompt_features"}) + "\n" for r in _prompt_feature_rows()))
    assert read_pool(plain).prompt_features is None


@pytest.mark.parametrize(
    ("row", "change", "message"),
    [
        (1, {"prompt_features": [1.0, 2.0, 9.0]}, "line 2, field 'prompt_features': differs from an earlier row of prompt_id 'a'"),
        (2, {"prompt_features": None}, "line 3, field 'prompt_features': present on some rows and missing on others"),
        (2, {"prompt_features": [1.0, 2.0]}, "line 3, field 'prompt_features': length 2, expected 3"),
        (2, {"prompt_features": [1.0, float("nan"), 2.0]}, "line 3, field 'prompt_features': contains NaN or infinity"),
        (0, {"prompt_features": "x"}, "line 1, field 'prompt_features': Input should be a valid list"),
    ],
)
def test_bad_prompt_features_are_named(tmp_path, row, change, message):
    rows = _prompt_feature_rows()
    rows[row] = {**rows[row], **change}
    if change.get("prompt_features") is None:
        del rows[row]["prompt_features"]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PoolFormatError, match=re.escape(message)):
        read_pool(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    good = json.dumps({"prompt_id": "a", "prompt": "p", "response_id": "r", "model": "m", "response": "x", "features": [1.0]})
    path.write_bytes(good.encode() + b"\n" + b'{"prompt_id": "\xff"}\n')
    with pytest.raises(PoolFormatError, match=re.escape("line 2: not valid UTF-8 (byte 16 of the line)")):
        read_pool(path)
    parquet_named_jsonl = tmp_path / "data.jsonl"
    parquet_named_jsonl.write_bytes(b"PAR1\x15\x04\xf2\x34 binary")
    with pytest.raises(PoolFormatError, match="looks like a Parquet file: name it .parquet"):
        read_pool(parquet_named_jsonl)


# -- the Parquet features column, read in one go ----------------------------------------

_FEATURE_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -1.5, 3.0]),
)
_FEATURE_TYPES = {
    "float32": pa.list_(pa.float32()),
    "float64": pa.list_(pa.float64()),
    "int64": pa.list_(pa.int64()),
    "large": pa.large_list(pa.float32()),
}


def _outcome(path: Path):
    """(features, scores, prompt ids) or the error text: what a caller of read_pool sees."""
    try:
        pool = read_pool(path)
    except PoolFormatError as exc:
        return str(exc)
    return pool.features.tobytes(), pool.features.shape, pool.scores.tolist(), [p.id for p in pool.prompts]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_parquet_feature_column_reads_like_the_row_by_row_check(tmp_path_factory, data, monkeypatch):
    """On random feature columns (missing rows, wrong lengths, NaN/inf, ints, float64, large
    lists, fixed-size lists) the one-pass reader gives the same pool or the same error, row
    and message as validating every row's list on its own."""
    import activepref.pools.reader as data_module

    n = data.draw(st.integers(1, 7), label="rows")
    kind = data.draw(st.sampled_from([*_FEATURE_TYPES, "fixed"]), label="type")
    d = data.draw(st.integers(1 if kind == "fixed" else 0, 4), label="dim")  # arrow has no 0-wide fixed lists
    feats = []
    for i in range(n):
        shape = data.draw(st.sampled_from(["ok", "ok", "ok", "none", "short"]), label=f"row {i}")
        if shape == "none":
            feats.append(None)
            continue
        length = d if shape == "ok" or kind == "fixed" else data.draw(st.integers(0, 5).filter(lambda k: k != d))
        values = [data.draw(_FEATURE_VALUES) for _ in range(length)]
        if kind == "int64":
            values = [int(v) if math.isfinite(v) and abs(v) < 2**62 else 7 for v in values]
        feats.append(values)
    if kind == "fixed":
        flat = [v for f in feats for v in (f if f is not None else [0.0] * d)]
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d, mask=pa.array([f is None for f in feats]))
    else:
        column = pa.array(feats, _FEATURE_TYPES[kind])
    rows = [without(row(i), "features") for i in range(n)]
    table = pa.Table.from_pylist(rows).append_column("features", column)
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    pq.write_table(table, path)
    fast = _outcome(path)
    with monkeypatch.context() as m:
        m.setattr(data_module, "_feature_column", lambda t: (t, None))
        slow = _outcome(path)
    assert fast == slow


def test_parquet_feature_column_of_strings_keeps_the_row_check(tmp_path):
    """A features column of another type (strings) is still checked row by row."""
    rows = [row(i, features=["a", "b", "c"]) for i in range(2)]
    err = pool_error(write_parquet(tmp_path / "pool.parquet", rows))
    assert "row 0" in str(err) and "features" in str(err)


def test_reuse_last_pool_hands_back_the_pool_until_its_file_changes(tmp_path):
    import os

    from activepref.pools.sources import load_pool, reuse_last_pool, synthetic_pool, write_pool

    path = write_pool(synthetic_pool(n_prompts=6, candidates=3, dim=4, seed=1), tmp_path / "pool.parquet")
    assert load_pool(str(path)) is not load_pool(str(path))  # off by default
    reuse_last_pool()
    try:
        first = load_pool(str(path))
        assert load_pool(str(path)) is first
        with pytest.raises(ValueError):
            first.features[0, 0] = 1.0  # shared: read-only
        write_pool(synthetic_pool(n_prompts=7, candidates=3, dim=4, seed=2), path)
        os.utime(path, ns=(1, 1))  # a changed file (mtime and size) is read again
        second = load_pool(str(path))
        assert second is not first and len(second.prompts) == 7
        with pytest.raises(Exception, match="does not exist|not found|No such"):
            load_pool(str(tmp_path / "missing.parquet"))
    finally:
        reuse_last_pool(False)
