"""The pairwise judge as a main-loop judge kind (``judge: {kind: pairwise}``), through the real
``openai`` backend against the fake OpenAI-compatible server: per-prompt methods and batch
designs, both orders and position consistency, ties, crash and resume without a repeated call.

The fake judge knows the synthetic pool's model ranking (the model name is in each response's
text): the better model's response wins with P(A) 0.8 when shown first and 0.3 when shown
second (a position bias towards A); two responses of the same model get P(A) = 0.6 in either
order, pure position bias, so asked both ways they cancel to a tie.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers.fake_openai import Action, FakeOpenAIServer  # noqa: E402

from activepref.config import load_config  # noqa: E402
from activepref.core import loop  # noqa: E402
from activepref.core.runs import resume, run, status  # noqa: E402
from activepref.core.store import RunStore  # noqa: E402
from activepref.errors import ConfigError  # noqa: E402
from activepref.pools.sources import SYNTHETIC_MODELS, synthetic_pool, write_pool  # noqa: E402

TINY_ENN = {"enn.heads": 3, "enn.hidden": 8, "enn.steps": 3}
SHOWN = re.compile(r"## Response A\n(.*?)\n\n## Response B\n(.*?)\n\n## Question", re.S)


def rank(text: str) -> int:
    """0 for the best synthetic model; the text ends with 'by <model>.'"""
    return SYNTHETIC_MODELS.index(text.rsplit(" by ", 1)[1].rstrip("."))


def shown(body: dict) -> tuple[str, str]:
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    a, b = SHOWN.search(user).groups()
    return a, b


def judge_script(n: int, body: dict) -> Action:
    a, b = shown(body)
    p_a = 0.6 if rank(a) == rank(b) else (0.8 if rank(a) < rank(b) else 0.3)
    return Action.reply("A" if p_a >= 0.5 else "B", top_logprobs=[("A", math.log(p_a)), ("B", math.log(1 - p_a))])


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(synthetic_pool(n_prompts=24, candidates=6, dim=8, seed=2, min_candidates=6), tmp_path / "pool.parquet")


def config(pool: Path, srv: FakeOpenAIServer, cache: Path, **overrides):
    judge = {"kind": "pairwise", "model": {"backend": "openai", "model": "judge-m", "base_url": srv.base_url,
                                           "api_key_env": "PAIRWISE_TEST_KEY", "max_retries": 0}}
    judge.update(overrides.pop("judge", {}))
    base = {"pool": str(pool), "batch_size": 4, "iterations": 3, "eval_fraction": 0.2, "cache_path": str(cache), "judge": judge}
    return load_config(None, {**base, **TINY_ENN, **overrides})


def rows_and_texts(run_dir: Path):
    with RunStore.open_readonly(run_dir) as store:
        responses, _ = store.responses()
        return store.preference_rows(), [r.text for r in responses], [rec.pair_status for rec in store.iterations()]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRWISE_TEST_KEY", "x")


def test_both_orders_choose_the_better_model_tie_on_pure_position_bias_and_report_consistency(tmp_path: Path, pool: Path) -> None:
    with FakeOpenAIServer(judge_script) as srv:
        cfg = config(pool, srv, tmp_path / "cache.sqlite", method="dts", judge={"both_orders": True})
        run(cfg, tmp_path / "run")
        requests = len(srv.chat_requests)
    prefs, texts, pair_status = rows_and_texts(tmp_path / "run")
    ties = sum(s["tie"] for s in pair_status)
    assert len(prefs) + ties == 12 and all(s["failed"] == 0 for s in pair_status)  # 3 iterations x 4 prompts
    for p in prefs:  # the better model is chosen; its score is P(chosen better), the rejected's the rest
        assert rank(texts[p.chosen_idx]) < rank(texts[p.rejected_idx])
        assert p.score_chosen == pytest.approx(0.75) and p.score_chosen + p.score_rejected == pytest.approx(1.0)
    assert requests == 2 * 12  # every pair asked once in each order, nothing repeated
    st = status(tmp_path / "run")
    assert st.annotations == 12 and st.summary["pairs_compared"] == 12
    assert st.summary["pairs_asked_both_orders"] == 12
    assert st.summary["position_consistency"] == pytest.approx(len(prefs) / 12)  # same-model pairs disagree with themselves
    assert st.last_metrics["annotations"] == 12


def test_one_order_is_drawn_per_pair_and_the_shown_first_winner_is_unbiased_by_position(tmp_path: Path, pool: Path) -> None:
    with FakeOpenAIServer(judge_script) as srv:
        cfg = config(pool, srv, tmp_path / "cache.sqlite", method="random", iterations=4)
        run(cfg, tmp_path / "run")
        bodies = [r.body for r in srv.chat_requests]
    prefs, texts, _ = rows_and_texts(tmp_path / "run")
    assert len(bodies) == 16  # one call per pair
    # The proposal's first response is shown first for some pairs and second for others.
    firsts = {texts[p.chosen_idx] for p in prefs} | {texts[p.rejected_idx] for p in prefs}
    assert firsts and 0 < sum(shown(b)[0] < shown(b)[1] for b in bodies) < 16
    for p in prefs:
        if rank(texts[p.chosen_idx]) != rank(texts[p.rejected_idx]):
            assert rank(texts[p.chosen_idx]) < rank(texts[p.rejected_idx])


def test_a_batch_design_is_annotated_by_comparisons(tmp_path: Path, pool: Path) -> None:
    with FakeOpenAIServer(judge_script) as srv:
        cfg = config(pool, srv, tmp_path / "cache.sqlite", method="entropy", design_budget=3)
        run(cfg, tmp_path / "run")
        requests = len(srv.chat_requests)
    prefs, texts, pair_status = rows_and_texts(tmp_path / "run")
    assert sum(s["ok"] + s["tie"] for s in pair_status) == 9 == requests
    assert all(rank(texts[p.chosen_idx]) <= rank(texts[p.rejected_idx]) for p in prefs)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("point", ["annotate.mid@1", "annotate.before_commit@2", "select.after_commit@1"])
def test_a_crash_resumes_to_the_same_dataset_without_a_repeated_call(tmp_path: Path, pool: Path, monkeypatch, point: str) -> None:
    with FakeOpenAIServer(judge_script) as srv:
        run(config(pool, srv, tmp_path / "a.sqlite", method="drts", judge={"both_orders": True}), tmp_path / "straight")
        straight_calls = len(srv.chat_requests)
        srv.reset_stats()
        name, at = point.split("@")

        def crash(n: str, it: int) -> None:
            if n == name and it == int(at):
                raise _Crash(point)

        monkeypatch.setattr(loop, "crash_point", crash)
        cfg = config(pool, srv, tmp_path / "b.sqlite", method="drts", judge={"both_orders": True})
        with pytest.raises(_Crash):
            run(cfg, tmp_path / "killed")
        monkeypatch.setattr(loop, "crash_point", lambda n, it: None)
        resume(tmp_path / "killed")
        assert len(srv.chat_requests) == straight_calls  # killed + resumed: each call once
    assert rows_and_texts(tmp_path / "straight")[0] == rows_and_texts(tmp_path / "killed")[0]


def test_config_refuses_what_a_comparing_judge_cannot_serve(tmp_path: Path, pool: Path) -> None:
    with FakeOpenAIServer(judge_script) as srv:
        with pytest.raises(ConfigError, match="maxmin.*compares pairs"):
            config(pool, srv, tmp_path / "c.sqlite", method="maxmin")
        with pytest.raises(ConfigError, match="both_orders applies to judges that compare"):
            config(pool, srv, tmp_path / "c.sqlite", judge={"kind": "likert", "both_orders": True})


def test_the_audit_log_has_one_line_per_compared_pair(tmp_path: Path, pool: Path) -> None:
    import json

    log = tmp_path / "audit.jsonl"
    with FakeOpenAIServer(judge_script) as srv:
        run(config(pool, srv, tmp_path / "cache.sqlite", method="dts", judge={"audit_log": str(log)}), tmp_path / "run")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 12 and all(e["ok"] and e["judge"].startswith("pairwise|") for e in lines)
    assert len({(e["response_id"], e["other_response_id"]) for e in lines}) == 12


def test_routed_pairs_go_to_people_or_to_the_pairwise_model_and_a_resume_repeats_no_call(tmp_path: Path, pool: Path) -> None:
    """judge: {kind: routed, options: {judge: pairwise, count: 1}}: one pair per iteration to
    people, three to the model over HTTP; the run stops for the human label (--no-wait), and
    the resume after it gets the model's answers from the cache."""
    from activepref.annotate.queue import AnnotationQueue
    from activepref.judges.human import AwaitingLabels

    with FakeOpenAIServer(judge_script) as srv:
        cfg = config(pool, srv, tmp_path / "cache.sqlite", method="dts", iterations=2,
                     judge={"kind": "routed", "options": {"judge": "pairwise", "count": 1}})
        run_dir = tmp_path / "run"
        with pytest.raises(AwaitingLabels):
            run(cfg, run_dir, wait_for_labels=False)
        assert len(srv.chat_requests) == 3  # the model side was judged before the stop
        for _ in range(2):
            queue = AnnotationQueue.open(run_dir)
            if "ann" not in queue.annotators():
                queue.add_annotator("ann")
            while (task := queue.next_task("ann")) is not None:
                queue.submit(task, "ann", "tie")
            queue.close()
            try:
                resume(run_dir, wait_for_labels=False)
            except AwaitingLabels:
                pass
        bodies = [str(r.body) for r in srv.chat_requests]
    assert len(bodies) == 6 == len(set(bodies))  # 3 model pairs per iteration, none asked twice
    st = status(run_dir)
    assert st.iterations_done == 2 and st.annotation["tasks"]["complete"] == 2
    with RunStore.open_readonly(run_dir) as store:
        rows = store.conn.execute("SELECT judge, p_first FROM comparisons").fetchall()
    assert len(rows) == 8 and all(judge.startswith("routed|pairwise|") for judge, _ in rows)
    assert [p for _, p in rows].count(0.5) >= 2  # the two human ties (the model never says exactly 0.5 here)
