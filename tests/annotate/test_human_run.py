"""Human and routed judges inside real runs: a run stops for labels and resumes on them, the
loop and the app work on one run directory at once, a killed waiting run loses nothing, the
routed judge sends the most uncertain pairs to people and keeps its routes across resumes, and
the export records who judged each pair."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import time

import httpx2 as httpx
import pytest

from activepref.annotate.queue import AnnotationQueue
from activepref.core import runs
from activepref.core.export import export_run
from tests.annotate.human_runs import (
    CLI,
    add_link,
    form_fields,
    free_port,
    human_config,
    label_everything,
    serve,
    start_awaiting,
)


def sql(run_dir, query, args=()):
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def test_a_human_run_stops_for_labels_and_resumes_on_them(tmp_path):
    config = human_config(tmp_path, {"kind": "human"})
    run_dir = tmp_path / "run"
    message = start_awaiting(config, run_dir)
    assert "6 of 6 pair(s) await human labels" in message and "activepref annotate" in message
    st = runs.status(run_dir)
    assert st.stopped == "stopped: awaiting labels" and st.iterations_done == 0
    assert st.annotation["tasks"] == {"open": 6, "complete": 0, "failed": 0}
    with pytest.raises(Exception, match="await"):  # nothing labelled yet: stops again, nothing doubled
        runs.resume(run_dir, wait_for_labels=False)
    assert len(sql(run_dir, "SELECT * FROM annotation_tasks")) == 6
    assert label_everything(run_dir, ["alice"], shown="a") == 6
    with pytest.raises(Exception, match="await"):  # iteration 0 trains, iteration 1 waits
        runs.resume(run_dir, wait_for_labels=False)
    assert runs.status(run_dir).iterations_done == 1
    label_everything(run_dir, ["alice"], shown="b")
    history = runs.resume(run_dir, wait_for_labels=False)
    assert len(history) == 2
    st = runs.status(run_dir)
    assert st.stopped is None and st.iterations_done == 2
    assert st.annotation["annotators"] == {"alice": {"labels": 12, "skips": 0}}
    out = tmp_path / "ds.jsonl"
    n = export_run(run_dir, out, "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows) == len(sql(run_dir, "SELECT * FROM preferences")) == 12  # one label: no ties
    labels = {(a, b): (choice) for a, b, choice in sql(
        run_dir, "SELECT t.first_idx, t.second_idx, l.choice FROM annotation_labels l JOIN annotation_tasks t USING (task_id)")}
    ids = dict(sql(run_dir, "SELECT response_id, idx FROM responses"))
    for row in rows:
        assert row["judged_by"] == "human" and row["annotators"] == ["alice"] and row["votes"] == ["chosen"]
        c, r = ids[row["response_id_chosen"]], ids[row["response_id_rejected"]]
        pair, choice = ((c, r), "first") if (c, r) in labels else ((r, c), "second")
        assert labels[pair] == choice  # the chosen response is the one alice picked, whatever the display order


def test_max_wait_stops_a_waiting_run_at_its_deadline_and_resume_goes_on(tmp_path, monkeypatch):
    """A waiting run (no --no-wait) with max_wait_s stops at 'awaiting labels' once it has waited
    that long for a step's labels; labels that arrive in time are used and resume goes on."""
    import types

    from activepref.judges import human

    pauses: list[float] = []
    monkeypatch.setattr(human, "time", types.SimpleNamespace(
        monotonic=time.monotonic, sleep=lambda s: (pauses.append(s), time.sleep(s))[1]))
    config = human_config(tmp_path, {"kind": "human", "options": {"max_wait_s": 0.6, "poll_interval_s": 5.0}})
    run_dir = tmp_path / "run"
    with pytest.raises(Exception, match=r"waited 0.6 s \(max_wait_s\): 6 of 6 pair\(s\) await"):
        runs.run(config, run_dir)
    assert pauses and 0 < sum(pauses) <= 0.6  # slept to the deadline, not a 5 s poll interval past it
    st = runs.status(run_dir)
    assert st.stopped == "stopped: awaiting labels" and st.iterations_done == 0
    label_everything(run_dir, ["alice"])
    with pytest.raises(Exception, match="max_wait_s"):  # iteration 0 trains on its labels, iteration 1 waits out
        runs.resume(run_dir)
    assert runs.status(run_dir).iterations_done == 1
    label_everything(run_dir, ["alice"])
    history = runs.resume(run_dir)  # every label in: no wait, no stop
    assert len(history) == 2 and runs.status(run_dir).stopped is None


def test_majority_of_three_and_pairs_skipped_too_often_fail(tmp_path):
    config = human_config(tmp_path, {"kind": "human", "options": {"labels_per_pair": 3, "max_skips": 1}}, iterations=1)
    run_dir = tmp_path / "run"
    start_awaiting(config, run_dir)
    q = AnnotationQueue.open(run_dir)
    try:
        for name in ("ann", "bea", "cid"):
            q.add_annotator(name)
        tasks = [t for (t,) in q.conn.execute("SELECT task_id FROM annotation_tasks ORDER BY task_id")]
        skipped, rest = tasks[0], tasks[1:]
        assert q.submit(skipped, "ann", "skip").state == "failed"
        plan = {"ann": "first", "bea": "first", "cid": "second"}  # 2:1 for the first response
        for t in rest:
            for name, want in plan.items():
                swapped = q.swapped(name, t)
                q.submit(t, name, {"first": "b" if swapped else "a", "second": "a" if swapped else "b"}[want])
    finally:
        q.close()
    runs.resume(run_dir, wait_for_labels=False)
    failures = sql(run_dir, "SELECT error FROM comparison_failures")
    assert len(failures) == 1 and "skipped 1 time(s)" in failures[0][0]
    comparisons = sql(run_dir, "SELECT first_idx, p_first FROM comparisons WHERE judge = 'human'")
    assert len(comparisons) == len(rest) and all(p == 1.0 for _, p in comparisons)
    st = runs.status(run_dir)
    assert st.annotation["tasks"] == {"open": 0, "complete": 5, "failed": 1}
    assert st.annotation["agreement"]["items"] == 5 and st.annotation["agreement"]["annotators"] == 3
    assert st.annotation["agreement"]["kappa"] is None and st.annotation["agreement"]["alpha"] is not None
    out = tmp_path / "ds.jsonl"
    export_run(run_dir, out, "jsonl")
    for row in map(json.loads, out.read_text().splitlines()):
        assert sorted(row["votes"]) == ["chosen", "chosen", "rejected"] and sorted(row["annotators"]) == ["ann", "bea", "cid"]


def test_the_loop_waits_while_people_label_in_the_app_and_a_killed_loop_loses_nothing(tmp_path):
    config = human_config(tmp_path, {"kind": "human", "options": {"poll_interval_s": 0.2}})
    run_dir = tmp_path / "run"
    start_awaiting(config, run_dir)
    port = free_port()
    link = add_link(run_dir, "alice", port)
    app = serve(run_dir, port)
    loop = subprocess.Popen([*CLI, "resume", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        with httpx.Client(base_url=app.url) as client:
            client.get(link.replace(app.url, ""))
            for _ in range(3):  # label half of iteration 0 while the loop waits (and holds the run's lock)
                fields = form_fields(client.get("/").text)
                assert client.post("/label", data={**fields, "choice": "a"}).headers["location"] == "/?last=saved"
            time.sleep(1.0)
            assert loop.poll() is None  # still waiting
            os.killpg(loop.pid, signal.SIGKILL)  # killed while waiting
            loop.wait(timeout=30)
            loop = subprocess.Popen([*CLI, "resume", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            deadline = time.monotonic() + 240
            while loop.poll() is None and time.monotonic() < deadline:  # label whatever the app offers until the run ends
                page = client.get("/").text
                fields = form_fields(page)
                if "task_id" in fields:
                    client.post("/label", data={**fields, "choice": "b"})
                else:
                    time.sleep(0.2)
            assert loop.wait(timeout=10) == 0, loop.stderr.read().decode()[-2000:] if loop.stderr else ""
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
        app.stop()
    st = runs.status(run_dir)
    assert st.iterations_done == 2 and st.stopped is None
    assert len(sql(run_dir, "SELECT * FROM annotation_tasks")) == 12
    assert len(sql(run_dir, "SELECT * FROM annotation_labels")) == 12  # nothing labelled twice
    assert len(sql(run_dir, "SELECT * FROM comparisons")) == 12
    assert len(sql(run_dir, "SELECT * FROM preferences")) == 12


def test_routed_sends_the_most_uncertain_pairs_to_people_and_keeps_its_routes(tmp_path):
    judge = {"kind": "routed", "options": {"judge": "replay", "share": 0.5}}
    config = human_config(tmp_path, judge, iterations=3)
    run_dir = tmp_path / "run"
    start_awaiting(config, run_dir)
    first_routes = sql(run_dir, "SELECT * FROM annotation_routes ORDER BY first_idx")
    assert len(first_routes) == 6 and sum(r[3] for r in first_routes) == 3  # ceil(0.5 * 6) to people
    with pytest.raises(Exception, match="await"):
        runs.resume(run_dir, wait_for_labels=False)  # nothing new: the same routes, no new tasks
    assert sql(run_dir, "SELECT * FROM annotation_routes ORDER BY first_idx") == first_routes
    for _ in range(3):
        label_everything(run_dir, ["alice"])
        try:
            runs.resume(run_dir, wait_for_labels=False)
        except Exception as exc:
            assert "await" in str(exc)
    assert runs.status(run_dir).iterations_done == 3
    routes = sql(run_dir, "SELECT iteration, human, uncertainty, first_idx, second_idx FROM annotation_routes")
    for it in range(3):
        mine = [r for r in routes if r[0] == it]
        people = [u for _, h, u, _, _ in mine if h]
        model = [u for _, h, u, _, _ in mine if not h]
        assert len(people) == math.ceil(0.5 * len(mine))
        assert all(u is not None for u in people + model)
        assert min(people) >= max(model)  # the most uncertain pairs went to people
    scores = dict(sql(run_dir, "SELECT response_idx, score FROM pool_scores"))
    human_pairs = {(a, b) for _, h, _, a, b in routes if h}
    for a, b, p, judge_name in sql(run_dir, "SELECT first_idx, second_idx, p_first, judge FROM comparisons"):
        assert judge_name == "routed|replay"
        if (a, b) not in human_pairs:  # the model side: Bradley-Terry on the replayed scores
            assert p == pytest.approx(1 / (1 + math.exp(-(scores[a] - scores[b]))))
    out = tmp_path / "ds.jsonl"
    export_run(run_dir, out, "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by = {"human": 0, "replay": 0}
    for row in rows:
        by[row["judged_by"]] += 1
        assert (row["annotators"] == ["alice"]) == (row["judged_by"] == "human")
    assert by["human"] >= 1 and by["replay"] >= 1 and sum(by.values()) == len(rows)


def test_routed_options_are_checked_when_the_config_loads(tmp_path):
    from activepref.errors import ConfigError

    for options, message in (
        ({"judge": "replay"}, "exactly one of share"),
        ({"judge": "replay", "share": 0.2, "count": 3}, "exactly one of share"),
        ({"judge": "human", "count": 3}, "cannot be 'human'"),
        ({"judge": "replay", "share": 1.5}, "share"),
    ):
        with pytest.raises((ConfigError, ValueError), match=message):
            human_config(tmp_path, {"kind": "routed", "options": options})
