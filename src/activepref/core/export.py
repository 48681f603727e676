"""Write a run's preferences as a TRL preference dataset (JSONL or Parquet).

Conversational by default: ``prompt`` is the message list up to the user turn, ``chosen``
and ``rejected`` hold only the assistant message. ``standard=True`` writes plain strings.
Extra columns: prompt_id, score_chosen, score_rejected, model_chosen, model_rejected,
method, iteration, response_id_chosen, response_id_rejected (TRL ignores them; `activepref
evaluate` uses the response ids to find the pairs' features in the pool), and who judged the
pair: judged_by (``human``, or the judge kind: a routed run's model side for the pairs people
did not get), annotators (the people whose labels decided it; empty for a model) and votes
(their labels in the exported pair's terms: chosen, rejected or tie).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from activepref.annotate.queue import AnnotationQueue, TaskOutcome
from activepref.config import config_from_json
from activepref.core.store import PreferenceRecord, RunStore

ExportFormat = Literal["jsonl", "parquet"]
COLUMNS = (
    "prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected",
    "model_chosen", "model_rejected", "method", "iteration", "response_id_chosen", "response_id_rejected",
    "judged_by", "annotators", "votes",
)


def exported_preferences(prefs: list[PreferenceRecord], response_prompt: np.ndarray) -> list[PreferenceRecord]:
    """The preferences `export` writes: both responses answer the record's prompt
    (cross-prompt comparisons are left out)."""
    return [p for p in prefs if int(response_prompt[p.rejected_idx]) == p.prompt_idx]


def preference_records(store: RunStore, standard: bool = False) -> list[dict[str, Any]]:
    """In-prompt preferences as TRL rows. Cross-prompt comparisons (002 §3.4) have no shared
    prompt, so they train the reward model inside the run but are not exported here."""
    prompts = [p for p, _, _ in store.prompts()]
    responses, response_prompt = store.responses()
    model_judge = model_judge_kind(store)
    people = human_outcomes(store)
    out = []
    for pref in exported_preferences(store.preference_rows(), response_prompt):
        prompt, chosen, rejected = prompts[pref.prompt_idx], responses[pref.chosen_idx], responses[pref.rejected_idx]
        outcome = people.get(frozenset((pref.chosen_idx, pref.rejected_idx)))
        if standard:
            p_val: Any = prompt.text
            c_val: Any = chosen.text
            r_val: Any = rejected.text
        else:
            p_val = prompt.conversation()
            c_val = [{"role": "assistant", "content": chosen.text}]
            r_val = [{"role": "assistant", "content": rejected.text}]
        out.append({
            "prompt": p_val, "chosen": c_val, "rejected": r_val, "prompt_id": prompt.id,
            "score_chosen": pref.score_chosen, "score_rejected": pref.score_rejected,
            "model_chosen": chosen.model, "model_rejected": rejected.model,
            "method": pref.method, "iteration": pref.iteration, "response_id_chosen": chosen.id, "response_id_rejected": rejected.id,
            "judged_by": "human" if outcome is not None else model_judge,
            "annotators": list(outcome.annotators) if outcome is not None else [],
            "votes": votes_for(outcome, pref.chosen_idx) if outcome is not None else [],
        })
    return out


def model_judge_kind(store: RunStore) -> str:
    """The judge kind behind the pairs people did not label: the config's kind, or a routed
    judge's model side."""
    text = store.meta("config")
    if text is None:
        return "unknown"
    judge = config_from_json(text).judge
    if judge.kind == "routed":
        from activepref.judges.human import RoutedOptions

        return RoutedOptions.model_validate(judge.options).judge  # its default, not a second copy of it
    return judge.kind


def human_outcomes(store: RunStore) -> dict[frozenset[int], TaskOutcome]:
    """Decided annotation tasks by unordered pair (none in a store older than the tables)."""
    if not AnnotationQueue.present(store.conn):
        return {}
    return {k: o for k, o in AnnotationQueue(store.conn).human_pairs().items() if o.state == "complete"}


def votes_for(outcome: TaskOutcome, chosen_idx: int) -> list[str]:
    """A task's votes (first/second/tie of the asked pair) as chosen/rejected/tie of the export."""
    first_is_chosen = outcome.first_idx == chosen_idx
    name = {"first": "chosen" if first_is_chosen else "rejected", "second": "rejected" if first_is_chosen else "chosen"}
    return [name.get(v, "tie") for v in outcome.votes]


def export_run(run_dir: str | Path, output: str | Path, fmt: ExportFormat = "parquet", standard: bool = False) -> int:
    """Write the dataset; returns the number of rows. Reading needs no lock."""
    store = RunStore.open_readonly(run_dir)
    try:
        with store.snapshot():  # prompts, responses and preferences of one committed state, while a run may write
            records = preference_records(store, standard)
    finally:
        store.close()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        _write(records, tmp, fmt, standard)
    except BaseException as exc:  # a full disk, Ctrl-C: no partial file is left behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        raise
    tmp.replace(output)
    return len(records)


def _write(records: list[dict[str, Any]], tmp: Path, fmt: ExportFormat, standard: bool) -> None:
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in records:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        msg = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        text_type = pa.string() if standard else msg
        schema = pa.schema([
            ("prompt", text_type), ("chosen", text_type), ("rejected", text_type), ("prompt_id", pa.string()),
            ("score_chosen", pa.float64()), ("score_rejected", pa.float64()), ("model_chosen", pa.string()),
            ("model_rejected", pa.string()), ("method", pa.string()), ("iteration", pa.int64()),
            ("response_id_chosen", pa.string()), ("response_id_rejected", pa.string()),
            ("judged_by", pa.string()), ("annotators", pa.list_(pa.string())), ("votes", pa.list_(pa.string())),
        ])
        pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
