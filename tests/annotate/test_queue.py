"""The annotation queue's promises: one label per annotator and pair, never more labels than
a pair needs (also under racing threads), claims that spread annotators over pairs, the
recorded display order, tokens and CSRF, and the status summary."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from activepref.annotate.queue import AnnotationQueue, connect, token_digest
from activepref.config import load_config
from activepref.core.store import RunStore
from activepref.errors import ConfigError
from activepref.pools.sources import synthetic_pool


@pytest.fixture
def run_dir(tmp_path):
    pool = synthetic_pool(n_prompts=8, candidates=4, dim=4, seed=0)
    d = tmp_path / "run"
    RunStore.create(d, load_config().model_dump_json(), pool, np.array([0]), np.arange(1, 8)).close()
    return d


@pytest.fixture
def queue(run_dir):
    q = AnnotationQueue.open(run_dir)
    yield q
    q.close()


def test_tokens_are_stored_as_digests_and_rotate(queue):
    token = queue.add_annotator("alice")
    stored = queue.conn.execute("SELECT token_sha256 FROM annotators").fetchone()[0]
    assert stored == token_digest(token) and token not in stored
    assert queue.annotator_for(token) == "alice"
    assert queue.annotator_for(token + "x") is None and queue.annotator_for("") is None and queue.annotator_for(None) is None
    new = queue.add_annotator("alice")  # a new link; the old one stops working
    assert queue.annotator_for(new) == "alice" and queue.annotator_for(token) is None
    with pytest.raises(ConfigError, match="annotator name"):
        queue.add_annotator("<script>")


def test_csrf_token_is_per_annotator_and_survives_a_new_connection(run_dir, queue):
    queue.add_annotator("alice")
    queue.add_annotator("bob")
    token = queue.csrf_token("alice")
    assert queue.check_csrf("alice", token) and not queue.check_csrf("bob", token)
    assert not queue.check_csrf("alice", None) and not queue.check_csrf("alice", "")
    other = AnnotationQueue.open(run_dir)  # a restarted app: same secret, same tokens, same orders
    try:
        assert other.check_csrf("alice", token)
        assert [other.swapped("alice", t) for t in range(20)] == [queue.swapped("alice", t) for t in range(20)]
    finally:
        other.close()


def test_orders_are_mixed_and_choices_are_stored_in_the_pairs_terms(queue):
    queue.add_annotator("alice")
    queue.add_tasks(0, [(2 * k, 2 * k + 1) for k in range(12)], 1, 3)
    flips = [queue.swapped("alice", t) for t in range(1, 13)]
    assert 0 < sum(flips) < 12  # both orders occur
    for task_id in range(1, 13):
        assert queue.submit(task_id, "alice", "a").status == "saved"
    rows = queue.conn.execute("SELECT task_id, choice, swapped FROM annotation_labels ORDER BY task_id").fetchall()
    for task_id, choice, swapped in rows:
        assert bool(swapped) == flips[task_id - 1]
        assert choice == ("second" if swapped else "first")  # "A" was the second response when swapped
        view = queue.view(task_id, "alice")
        first, second = (queue.conn.execute("SELECT text FROM responses WHERE idx = ?", (i,)).fetchone()[0]
                         for i in (2 * task_id - 2, 2 * task_id - 1))
        assert (view.shown_a, view.shown_b) == ((second, first) if swapped else (first, second))


def test_one_label_per_annotator_and_no_more_than_needed(queue):
    for name in ("alice", "bob", "carol"):
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1)], 2, 3)
    assert queue.submit(1, "alice", "a").status == "saved"
    assert queue.submit(1, "alice", "b").status == "duplicate"  # a double submit writes nothing
    assert queue.next_task("alice") is None  # never the same pair twice
    done = queue.submit(1, "bob", "tie")
    assert (done.status, done.state) == ("saved", "complete")
    assert queue.submit(1, "carol", "a").status == "closed"
    outcome = queue.outcomes([(0, 1)])[(0, 1)]
    assert outcome.state == "complete" and len(outcome.votes) == 2
    assert queue.conn.execute("SELECT COUNT(*) FROM annotation_labels").fetchone()[0] == 2
    with pytest.raises(ValueError, match="choice"):
        queue.submit(1, "carol", "maybe")
    with pytest.raises(LookupError):
        queue.submit(99, "carol", "a")


def test_racing_annotators_fill_the_last_slot_exactly_once(run_dir, queue):
    names = [f"a{k}" for k in range(12)]
    for name in names:
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1)], 1, 3)
    results: dict[str, str] = {}
    barrier = threading.Barrier(len(names))

    def label(name: str) -> None:
        q = AnnotationQueue(connect(run_dir))  # each annotator its own connection, as the app's threads
        try:
            barrier.wait()
            results[name] = q.submit(1, name, "a").status
        finally:
            q.close()

    threads = [threading.Thread(target=label, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["closed"] * 11 + ["saved"]
    assert queue.conn.execute("SELECT COUNT(*) FROM annotation_labels").fetchone()[0] == 1


def test_claims_hand_concurrent_annotators_different_pairs(queue):
    for name in ("alice", "bob", "carol"):
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1), (2, 3)], 1, 3)
    a, b = queue.next_task("alice"), queue.next_task("bob")
    assert {a, b} == {1, 2}
    assert queue.next_task("alice") == a  # a reload shows the same pair
    assert queue.next_task("carol") is None  # both pairs are claimed
    assert queue.next_task("carol", lease_s=0) is None
    queue.conn.execute("UPDATE annotation_claims SET expires = 0 WHERE annotator = 'alice'")  # alice walked away
    assert queue.next_task("carol") == a
    assert queue.submit(b, "bob", "b").status == "saved"
    assert queue.next_task("bob") is None


def test_a_claim_sat_on_is_shared_once_nothing_else_is_left(queue, monkeypatch):
    """A pair bob claimed and left (a closed tab) goes to alice once she has nothing else and
    his claim is STEAL_AFTER_S old; whoever submits first fills it, the other gets 'closed'."""
    import time

    from activepref.annotate import queue as queue_module

    for name in ("alice", "bob", "carol"):
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1), (2, 3)], 1, 3)
    clock = [time.time()]
    monkeypatch.setattr(queue_module.time, "time", lambda: clock[0])
    bob = queue.next_task("bob")
    alice = queue.next_task("alice")
    assert alice != bob
    assert queue.submit(alice, "alice", "a").state == "complete"
    clock[0] += queue_module.STEAL_AFTER_S - 1
    assert queue.next_task("alice") is None  # bob may still be reading it
    clock[0] += 2
    assert queue.next_task("alice") == bob  # bob's claim is stale, nothing else is open
    assert queue.next_task("carol") is None  # alice's claim on it is fresh: not shared a third time
    assert queue.submit(bob, "alice", "b").status == "saved"
    assert queue.submit(bob, "bob", "a").status == "closed"  # bob came back too late: nothing doubled
    assert queue.conn.execute("SELECT annotator FROM annotation_labels WHERE task_id = ?", (bob,)).fetchall() == [("alice",)]
    assert queue.conn.execute("SELECT COUNT(*) FROM annotation_claims").fetchone()[0] == 0


def test_a_stale_claim_is_not_shared_while_free_pairs_remain(queue, monkeypatch):
    import time

    from activepref.annotate import queue as queue_module

    for name in ("alice", "bob"):
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1), (2, 3), (4, 5)], 1, 3)
    clock = [time.time()]
    monkeypatch.setattr(queue_module.time, "time", lambda: clock[0])
    first = queue.next_task("bob")
    clock[0] += queue_module.STEAL_AFTER_S + 1
    got = queue.next_task("alice")
    assert got != first  # a free pair first
    assert queue.submit(got, "alice", "a").state == "complete"
    third = queue.next_task("alice")
    assert third not in (first, got)


def test_skips_do_not_count_and_too_many_fail_the_pair(queue):
    for name in ("alice", "bob", "carol"):
        queue.add_annotator(name)
    queue.add_tasks(0, [(0, 1)], 1, 2)
    assert queue.submit(1, "alice", "skip").state == "open"
    assert queue.next_task("alice") is None  # skipped: not shown to alice again
    assert queue.submit(1, "bob", "skip").state == "failed"
    assert queue.submit(1, "carol", "a").status == "closed"
    outcome = queue.outcomes([(0, 1)])[(0, 1)]
    assert outcome.state == "failed" and outcome.skips == 2 and outcome.votes == []


def test_summary_counts_and_agreement(queue):
    for name in ("alice", "bob"):
        queue.add_annotator(name)
    pairs = [(2 * k, 2 * k + 1) for k in range(6)]
    queue.add_tasks(0, pairs, 2, 3)
    alice = ["first", "first", "second", "second", "tie", "first"]
    bob = ["first", "second", "second", "second", "tie", "first"]
    for k in range(6):  # submit in stored terms: undo each annotator's display order
        for name, votes in (("alice", alice), ("bob", bob)):
            swapped = queue.swapped(name, k + 1)
            shown = {"first": "b" if swapped else "a", "second": "a" if swapped else "b", "tie": "tie"}[votes[k]]
            assert queue.submit(k + 1, name, shown).status == "saved"
    summary = queue.summary()
    assert summary.tasks == {"open": 0, "complete": 6, "failed": 0}
    assert summary.annotators == {"alice": {"labels": 6, "skips": 0}, "bob": {"labels": 6, "skips": 0}}
    from activepref.annotate.agreement import cohens_kappa, krippendorff_alpha

    assert summary.agreement["items"] == 6 and summary.agreement["annotators"] == 2
    assert summary.agreement["kappa"] == pytest.approx(cohens_kappa(alice, bob))
    assert summary.agreement["alpha"] == pytest.approx(krippendorff_alpha([list(v) for v in zip(alice, bob)]))
    outcomes = queue.outcomes(pairs)
    assert [outcomes[p].verdict for p in pairs] == ["first", "tie", "second", "second", "tie", "first"]


def test_a_cross_prompt_pair_shows_each_response_under_its_own_prompt(run_dir, queue):
    """Batch designs may compare responses to different prompts: the page must not show one
    prompt for both (responses 0-3 answer prompt 0 and 4-7 prompt 1 in this pool)."""
    from activepref.annotate.app import AnnotationApp

    queue.add_annotator("alice")
    queue.add_tasks(0, [(0, 1), (2, 5)], 1, 3)
    prompts = {i: queue.conn.execute("SELECT text FROM prompts WHERE idx = ?", (i,)).fetchone()[0] for i in (0, 1)}
    texts = {i: queue.conn.execute("SELECT text FROM responses WHERE idx = ?", (i,)).fetchone()[0] for i in (2, 5)}
    same = queue.view(1, "alice")
    assert not same.cross_prompt and same.conversation == [{"role": "user", "content": prompts[0]}]
    cross = queue.view(2, "alice")
    assert cross.cross_prompt
    by_side = {cross.shown_a: cross.conversation, cross.shown_b: cross.conversation_b}
    assert by_side == {texts[2]: [{"role": "user", "content": prompts[0]}], texts[5]: [{"role": "user", "content": prompts[1]}]}
    # the other annotator order swaps the conversations with the responses
    for name in ("b0", "b1", "b2", "b3", "b4", "b5"):
        queue.add_annotator(name)
        view = queue.view(2, name)
        assert {view.shown_a: view.conversation, view.shown_b: view.conversation_b} == by_side

    app = AnnotationApp(run_dir)
    try:
        page = app.templates.get_template("task.html").render(run_name="run", task=cross, csrf_token="x", progress={}, annotator="alice")
        one = app.templates.get_template("task.html").render(run_name="run", task=same, csrf_token="x", progress={}, annotator="alice")
    finally:
        app.close()
    assert 'aria-label="conversation A"' in page and 'aria-label="conversation B"' in page and "different conversations" in page
    a_part, b_part = page.split('id="response-b"')
    assert prompts[0 if cross.shown_a == texts[2] else 1] in a_part.split('id="response-a"')[1]
    assert prompts[1 if cross.shown_a == texts[2] else 0] in b_part
    assert 'aria-label="conversation"' in one and "conversation A" not in one and "different conversations" not in one


def _outcomes_reference(queue, pairs):
    """The obvious version: two queries per pair."""
    from activepref.annotate.queue import TaskOutcome

    out = {}
    for a, b in pairs:
        row = queue.conn.execute("SELECT task_id, state, labels_needed FROM annotation_tasks WHERE first_idx = ? AND second_idx = ?",
                                 (a, b)).fetchone()
        if row is None:
            continue
        labels = queue.conn.execute("SELECT annotator, choice FROM annotation_labels WHERE task_id = ? ORDER BY created, annotator",
                                    (row[0],)).fetchall()
        votes = [(w, c) for w, c in labels if c != "skip"]
        out[(a, b)] = TaskOutcome(row[0], a, b, row[1], [c for _, c in votes], [w for w, _ in votes],
                                  sum(c == "skip" for _, c in labels), row[2])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_outcomes_match_the_per_pair_reference_in_a_few_queries(queue, seed):
    rng = np.random.default_rng(seed)
    names = [f"a{k}" for k in range(4)]
    for name in names:
        queue.add_annotator(name)
    unordered = sorted({(int(min(a, b)), int(max(a, b))) for a, b in rng.integers(0, 32, size=(900, 2)) if a != b})
    pairs = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in unordered]  # one task per pair, in either order
    queue.add_tasks(0, pairs, 2, 2)
    for _ in range(600):
        task_id = int(rng.integers(1, len(pairs) + 1))
        queue.submit(task_id, names[int(rng.integers(len(names)))], str(rng.choice(["a", "b", "tie", "skip"])))
    asked = [pairs[i] for i in rng.permutation(len(pairs))] + [(40, 41), (0, 0)]  # two pairs without a task
    statements = []
    queue.conn.set_trace_callback(statements.append)
    try:
        fast = queue.outcomes(asked)
        everything = queue.human_pairs()
    finally:
        queue.conn.set_trace_callback(None)
    assert len(statements) <= -(-len(asked) // 400) + 1  # one per chunk of pairs, one for every task
    reference = _outcomes_reference(queue, asked)
    assert fast == reference and len(fast) == len(pairs)
    assert any(o.votes for o in fast.values()) and any(o.skips for o in fast.values()) and any(not o.votes for o in fast.values())
    assert everything == {frozenset(p): o for p, o in reference.items()}
