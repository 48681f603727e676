"""The candidate-pool and prompt-file readers.

A pool file has one row per candidate response: ``prompt_id``, ``prompt`` (a string or a
list of chat messages), ``response_id``, ``model``, ``response``, optional ``principle``,
optional ``score`` and ``score_<aspect>`` judge scores, optional hidden ``oracle`` reward
(simulation only, never shown to the loop) and ``features`` (a list of floats), or a
separate ``.npy`` matrix whose rows follow the file order. Optional ``prompt_features``: an
embedding of the prompt alone (the same list on every row of a prompt; BAL-PM's prompt
entropy uses it). JSONL or Parquet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from activepref.errors import PoolFormatError
from activepref.pools.records import ASPECTS, Prompt, Response, content_id

if TYPE_CHECKING:
    from activepref.core.features import FeatureScan


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class PoolRow(BaseModel):
    """One candidate response as it appears in a pool file (untrusted input)."""

    model_config = ConfigDict(extra="allow", strict=False)
    prompt_id: str
    prompt: str | list[_Message]
    response_id: str
    model: str
    response: str
    principle: str | None = None
    score: float | None = None
    oracle: float | None = None
    features: list[float] | None = None
    prompt_features: list[float] | None = None
    instructions: Any = None  # verifiable instructions of the prompt (activepref.ifeval), a list or its JSON

    @field_validator("prompt_id", "response_id", "model")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v

    @field_validator("score", "oracle")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("prompt_features")
    @classmethod
    def _not_empty_vector(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v:
            raise ValueError("is an empty vector")
        return v


@dataclass
class Pool:
    """A candidate pool in memory.

    prompt_index: [n] prompt of each response; features: [n, d] float32, or a read-only
    memory map of a float16/float32 .npy (``feature_scan`` set: a run references that file);
    scores: [n] judge score (NaN when absent); aspect_scores: aspect -> [n];
    oracle: [n] hidden reward for evaluation (None when the pool has none);
    prompt_features: [n_prompts, q] float32 prompt-only embeddings, in ``prompts`` order (or None);
    tokens: the generation call's usage per response (columns ``prompt_tokens`` and
    ``completion_tokens``; None when the pool has neither): what generating the pool cost.
    """

    prompts: list[Prompt]
    responses: list[Response]
    prompt_index: np.ndarray
    features: np.ndarray
    scores: np.ndarray
    aspect_scores: dict[str, np.ndarray]
    oracle: np.ndarray | None
    source: str = ""
    prompt_features: np.ndarray | None = None
    feature_scan: FeatureScan | None = None  # set when features is a memory-mapped .npy a run references
    tokens: np.ndarray | None = None  # [n, 2] int64 (prompt_tokens, completion_tokens) of each response's call, -1 unknown

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def reference_reward(self) -> np.ndarray:
        """What held-out accuracy is measured against: the oracle if present, else the score."""
        return self.oracle if self.oracle is not None else self.scores


@dataclass
class FeatureColumn:
    """A Parquet ``features`` column of numeric lists, read as one array instead of row by row.

    present: [n] bool; lengths: [n] list lengths; finite: [n] no NaN or infinity; matrix:
    [n, d] float32 when every row has d features (else None: some row then fails
    ``problem`` or the presence check, so the pool is refused before it is needed).
    ``problem(i)`` gives the message the row-wise check gives for row i, so errors stay the
    same, row for row."""

    matrix: np.ndarray | None
    present: np.ndarray
    lengths: np.ndarray
    finite: np.ndarray
    expected: int | None

    def problem(self, i: int) -> str | None:
        if not self.present[i]:
            return None
        return feature_problem(int(self.lengths[i]), self.expected, bool(self.finite[i]))


def feature_problem(length: int, expected: int | None, finite: bool) -> str | None:
    """What is wrong with one row's feature list (None: nothing); ``expected`` is the first
    row's length (None on the first row). One wording for the row-wise and one-pass checks."""
    if length == 0:
        return "is empty (a feature vector needs at least one value)"
    if expected is not None and length != expected:
        return f"length {length}, expected {expected} as on the first row"
    if not finite:
        return "contains NaN or infinity"
    return None


def _feature_column(table: Any) -> tuple[Any, FeatureColumn | None]:
    """Split a numeric list ``features`` column off a Parquet table (a column of any other
    type stays in the rows, for the row-wise checks and their messages)."""
    import pyarrow as pa

    if "features" not in table.column_names:
        return table, None
    column = table.column("features")
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return table, None
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        return table, None
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(array)
    present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_list(kind):
        lengths = np.where(present, kind.list_size, 0).astype(np.int64)
    else:
        lengths = np.asarray(array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    first = np.flatnonzero(present)
    expected = int(lengths[first[0]]) if len(first) else None
    values = array.flatten().to_numpy(zero_copy_only=False)  # the present rows' values, in order
    finite = np.ones(n, dtype=bool)
    matrix = None
    if expected is not None and present.all() and (lengths == expected).all():
        matrix = values.reshape(n, expected).astype(np.float32)  # float64 columns round as np.asarray(rows) does
        finite = np.isfinite(values.reshape(n, expected)).all(axis=1)
    elif len(first):
        ok = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), dtype=bool)
        lens = lengths[first]
        starts = np.cumsum(lens) - lens  # offset of each present row's values
        nonempty = lens > 0  # reduceat needs non-empty segments; an empty list is finite
        if nonempty.any():
            finite[first[nonempty]] = np.logical_and.reduceat(ok, starts[nonempty])
    return table.drop_columns(["features"]), FeatureColumn(matrix, present, lengths, finite, expected)


def _iter_rows(path: Path, apart: dict[str, Any] | None = None) -> Any:
    """Yield (location, raw dict) for JSONL or Parquet, naming lines/rows as a user counts them.

    With ``apart`` (a dict), a Parquet file's numeric ``features`` column is not put into
    the rows but read in one go into ``apart["features"]`` (a :class:`FeatureColumn`)."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".json", ".jsonl.gz"):
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:  # type: ignore[operator]
            for lineno, raw_line in enumerate(fh, start=1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    hint = " (this looks like a Parquet file: name it .parquet)" if lineno == 1 and raw_line.startswith(b"PAR1") else ""
                    raise PoolFormatError(str(path), f"line {lineno}", None, f"not valid UTF-8 (byte {exc.start + 1} of the line){hint}") from None
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    hint = " (this looks like a Parquet file: name it .parquet)" if lineno == 1 and raw_line.startswith(b"PAR1") else ""
                    raise PoolFormatError(str(path), f"line {lineno}", None, f"invalid JSON ({exc.msg} at column {exc.colno}){hint}") from None
                if not isinstance(raw, dict):
                    raise PoolFormatError(str(path), f"line {lineno}", None, "expected a JSON object per line")
                yield f"line {lineno}", raw
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise PoolFormatError(str(path), "file", None, f"not a readable Parquet file ({exc})") from None
        if apart is not None:
            table, column = _feature_column(table)
            if column is not None:
                apart["features"] = column
        for batch_start, batch in _parquet_batches(table):
            for i, raw in enumerate(batch.to_pylist()):
                yield f"row {batch_start + i}", raw
    else:
        raise PoolFormatError(str(path), "file", None, f"unknown extension '{path.suffix}'; use .jsonl or .parquet")


def _parquet_batches(table: Any) -> Any:
    start = 0
    for batch in table.to_batches(max_chunksize=4096):
        yield start, batch
        start += batch.num_rows


def read_pool(path: str | Path, features_path: str | Path | None = None) -> Pool:
    """Read and validate a candidate pool; errors name file, line/row and field."""
    path = Path(path)
    if not path.exists():
        raise PoolFormatError(str(path), "file", None, "does not exist")
    prompts: dict[str, Prompt] = {}
    prompt_order: list[str] = []
    prompt_pos: dict[str, int] = {}
    responses: list[Response] = []
    prompt_index: list[int] = []
    feats: list[list[float]] = []
    scores: list[float] = []
    oracle: list[float | None] = []
    aspects: dict[str, list[float]] = {a: [] for a in ASPECTS}
    seen_ids: dict[str, str] = {}
    has_features: bool | None = None
    prompt_feats: dict[str, list[float]] = {}
    has_prompt_features: bool | None = None
    apart: dict[str, Any] = {}
    tokens: list[tuple[int, int]] = []
    for index, (location, raw) in enumerate(_iter_rows(path, apart)):
        try:
            row = PoolRow.model_validate(raw)
        except ValidationError as exc:
            err = first_error(exc, raw)
            fld = error_field(err)
            value = err.get("input")
            shown = f" (got {value!r:.60})" if fld and value is not None and not isinstance(value, dict) else ""
            raise PoolFormatError(str(path), location, fld, f"{err['msg']}{shown}") from None
        if row.response_id in seen_ids:
            raise PoolFormatError(str(path), location, "response_id", f"duplicate id {row.response_id!r} (first at {seen_ids[row.response_id]})")
        seen_ids[row.response_id] = location
        text = row.prompt if isinstance(row.prompt, str) else _last_user(row.prompt, path, location)
        messages = () if isinstance(row.prompt, str) else tuple(m.model_dump() for m in row.prompt)
        meta = _prompt_meta(row.instructions, path, location)
        existing = prompts.get(row.prompt_id)
        if existing is None:
            prompts[row.prompt_id] = Prompt(row.prompt_id, text, messages, meta)
            prompt_order.append(row.prompt_id)
        elif existing.text != text or existing.messages != messages:
            raise PoolFormatError(str(path), location, "prompt", f"prompt_id {row.prompt_id!r} already has a different prompt text")
        elif existing.meta != meta:
            raise PoolFormatError(str(path), location, "instructions", f"differ from an earlier row of prompt_id {row.prompt_id!r}")
        bulk = apart.get("features")
        row_has = bool(bulk.present[index]) if bulk is not None else row.features is not None
        if has_features is None:
            has_features = row_has
        elif has_features != row_has:
            raise PoolFormatError(str(path), location, "features", "present on some rows and missing on others")
        if bulk is not None:
            problem = bulk.problem(index)
            if problem:
                raise PoolFormatError(str(path), location, "features", problem)
        elif row.features is not None:
            problem = feature_problem(len(row.features), len(feats[0]) if feats else None, all(math.isfinite(v) for v in row.features))
            if problem:
                raise PoolFormatError(str(path), location, "features", problem)
            feats.append(row.features)
        if has_prompt_features is None:
            has_prompt_features = row.prompt_features is not None
        elif has_prompt_features != (row.prompt_features is not None):
            raise PoolFormatError(str(path), location, "prompt_features", "present on some rows and missing on others")
        if row.prompt_features is not None:
            first = prompt_feats.setdefault(row.prompt_id, row.prompt_features)
            if first is not row.prompt_features and first != row.prompt_features:
                raise PoolFormatError(str(path), location, "prompt_features", f"differs from an earlier row of prompt_id {row.prompt_id!r}")
            reference = next(iter(prompt_feats.values()))
            if len(row.prompt_features) != len(reference) or not row.prompt_features:
                raise PoolFormatError(str(path), location, "prompt_features", f"length {len(row.prompt_features)}, expected {len(reference)} as on the first row (and > 0)")
            if not all(math.isfinite(v) for v in row.prompt_features):
                raise PoolFormatError(str(path), location, "prompt_features", "contains NaN or infinity")
        extra = row.model_extra or {}
        usage = []
        for name in ("prompt_tokens", "completion_tokens"):
            v = extra.get(name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise PoolFormatError(str(path), location, name, f"must be a number >= 0 (got {v!r:.40})")
            usage.append(-1 if v is None else int(v))
        tokens.append((usage[0], usage[1]))
        for a in ASPECTS:
            v = extra.get(f"score_{a}")
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise PoolFormatError(str(path), location, f"score_{a}", f"must be a finite number (got {v!r:.40})")
            aspects[a].append(float("nan") if v is None else float(v))
        aspect_vals = [aspects[a][-1] for a in ASPECTS if not math.isnan(aspects[a][-1])]
        if row.score is not None:
            scores.append(row.score)
        elif aspect_vals:
            scores.append(float(np.mean(aspect_vals)))  # 001 App. D.1: overall = mean over aspects
        else:
            scores.append(float("nan"))
        oracle.append(row.oracle)
        responses.append(Response(row.response_id, row.prompt_id, row.model, row.response, row.principle))
        prompt_index.append(prompt_pos.setdefault(row.prompt_id, len(prompt_pos)))
    if not responses:
        raise PoolFormatError(str(path), "file", None, "no rows")
    bulk = apart.get("features")
    if bulk is not None and has_features:
        feats = bulk.matrix  # type: ignore[assignment]
    features, scan = _load_features(path, features_path, feats, len(responses))
    n_oracle = sum(o is not None for o in oracle)
    if 0 < n_oracle < len(oracle):
        missing = next(i for i, o in enumerate(oracle) if o is None)
        raise PoolFormatError(str(path), f"row of response {responses[missing].id!r}", "oracle", "present on some rows and missing on others")
    return Pool(
        prompts=[prompts[p] for p in prompt_order],
        responses=responses,
        prompt_index=np.asarray(prompt_index, dtype=np.int64),
        features=features,
        scores=np.asarray(scores, dtype=np.float64),
        aspect_scores={a: np.asarray(v, dtype=np.float64) for a, v in aspects.items() if not np.all(np.isnan(v))},
        oracle=np.asarray(oracle, dtype=np.float64) if n_oracle else None,
        source=str(path),
        prompt_features=np.asarray([prompt_feats[p] for p in prompt_order], dtype=np.float32) if prompt_feats else None,
        feature_scan=scan,
        tokens=token_array if (token_array := np.asarray(tokens, dtype=np.int64).reshape(-1, 2)).max(initial=-1) >= 0 else None,
    )


def _prompt_meta(instructions: Any, path: Path, location: str) -> dict[str, Any]:
    """A prompt's metadata from its row: its verifiable instructions, validated."""
    if instructions is None:
        return {}
    from activepref.ifeval.instructions import validate_instructions

    try:
        return {"instructions": validate_instructions(instructions)}
    except ValueError as exc:
        raise PoolFormatError(str(path), location, "instructions", str(exc)) from None


def _last_user(messages: list[_Message], path: Path, location: str, field: str = "prompt") -> str:
    if not messages or messages[-1].role != "user":
        raise PoolFormatError(str(path), location, field, "a message list must end with a 'user' message")
    return messages[-1].content


def _load_features(path: Path, features_path: str | Path | None, rows: list[list[float]] | np.ndarray, n: int) -> tuple[np.ndarray, FeatureScan | None]:
    """The pool's [n, d] features: its ``features`` column as float32, or, from a separate
    .npy (float16 or float32), a read-only memory map that is never copied, with the scan
    (finite values, SHA-256, per-dimension statistics) a run needs to reference the file
    instead of copying it."""
    from activepref.core.features import NpyLayout, scan_features

    if features_path is not None:
        fpath = Path(features_path)
        if len(rows):
            raise PoolFormatError(str(path), "file", "features", f"has a features column and a features file {fpath} was also given; use one")
        layout = NpyLayout.read(fpath)
        if layout.rows != n:
            raise PoolFormatError(str(fpath), "file", "features", f"shape ({layout.rows}, {layout.dim}), expected ({n}, d): one row per pool row in file order")
        scan = scan_features(fpath)
        return np.load(fpath, mmap_mode="r"), scan
    if not len(rows):
        raise PoolFormatError(str(path), "file", "features", "no features: add a 'features' column or pass a .npy file (--features)")
    return np.asarray(rows, dtype=np.float32), None


class PromptRow(BaseModel):
    """One prompt of a prompts file (untrusted input)."""

    model_config = ConfigDict(extra="allow")
    prompt_id: str | None = None
    prompt: str | list[_Message] | None = None
    messages: list[_Message] | None = None
    turns: list[str] | None = None  # MT-bench question files: the first turn is used
    instructions: Any = None  # verifiable instructions (activepref.ifeval), a list or its JSON


def _union_branch(part: object) -> bool:
    """Whether a location part is pydantic's name of a union member ('str', 'list[_Message]')."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "dict") or "[" in part)


def first_error(exc: ValidationError, raw: Any) -> Any:
    """The error worth reporting: for a union field (``prompt``: a string or a message list),
    the one from the member the value's type chose (a list's missing ``content``, not "should
    be a valid string"); otherwise the first."""
    errors = exc.errors()
    head = errors[0]["loc"][:1]
    value = raw.get(head[0]) if head and isinstance(raw, dict) else None
    if isinstance(value, list):
        for err in errors:
            loc = err["loc"]
            if loc[:1] == head and len(loc) > 1 and isinstance(loc[1], str) and loc[1].startswith("list["):
                return err
    return errors[0]


def error_field(err: Any) -> str | None:
    """The dotted field of an error, without pydantic's union member names (prompt.0.content)."""
    return ".".join(str(p) for p in err["loc"] if not _union_branch(p)) or None


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts for live generation: JSONL rows with ``prompt`` (string or messages) or
    ``messages``, or MT-bench style ``turns`` (first turn); ``prompt_id`` (or
    ``question_id``) optional, else a content hash. Errors name file, line and field."""
    path = Path(path)
    if not path.exists():
        raise PoolFormatError(str(path), "file", None, "does not exist")
    out: list[Prompt] = []
    seen: dict[str, str] = {}
    for location, raw in _iter_rows(path):
        try:
            row = PromptRow.model_validate(raw)
        except ValidationError as exc:
            err = first_error(exc, raw)
            raise PoolFormatError(str(path), location, error_field(err), err["msg"]) from None
        if isinstance(row.prompt, str):
            text, messages = row.prompt, ()
        elif row.prompt is not None or row.messages is not None:
            msgs = row.prompt if row.prompt is not None else row.messages
            assert msgs is not None
            text = _last_user(msgs, path, location, "prompt" if row.prompt is not None else "messages")
            messages = tuple(m.model_dump() for m in msgs)
        elif row.turns:
            text, messages = row.turns[0], ()
        else:
            raise PoolFormatError(str(path), location, "prompt", "missing: give `prompt`, `messages` or `turns`")
        if not text.strip():
            raise PoolFormatError(str(path), location, "prompt", "is empty")
        extra = row.model_extra or {}
        pid = row.prompt_id or (str(extra["question_id"]) if "question_id" in extra else content_id(text, json.dumps(list(messages))))
        if pid in seen:
            if row.prompt_id is None and "question_id" not in extra:
                raise PoolFormatError(str(path), location, "prompt", f"the same prompt as {seen[pid]}, and neither row has a "
                                      "prompt_id to tell them apart (give each a distinct prompt_id, or drop one)")
            raise PoolFormatError(str(path), location, "prompt_id", f"duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = location
        out.append(Prompt(pid, text, messages, _prompt_meta(row.instructions, path, location)))
    if not out:
        raise PoolFormatError(str(path), "file", None, "no prompts")
    return out
