"""Money and budgets: the bill of a live run against the server's own usage counts, the
estimate against what a run then does, and a budget that stops a run cleanly and, raised on
resume, ends with the dataset of a run started with the larger budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401  (autouse fixtures)
from servers.fake_openai import FakeOpenAIServer  # noqa: E402
from test_live_server import (  # noqa: E402
    JUDGE_MODEL,
    PLAIN_PROMPTS,
    LiveScript,
    assert_ok,
    chat,
    export_jsonl,
    invoke,
    status_json,
    write_config,
    write_prompts,
)

from activepref.config import BudgetConfig, PriceConfig  # noqa: E402
from activepref.core.budget import check  # noqa: E402
from activepref.core.costs import Usage, token_cost  # noqa: E402

PRICES = (
    "prices:\n"
    "  gen-a: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n"
    "  gen-b: {input_per_mtok: 3.0, output_per_mtok: 4.0}\n"
    f"  {JUDGE_MODEL}: {{input_per_mtok: 10.0, output_per_mtok: 30.0, batch_discount: 0.5}}\n"
)


def test_token_cost_by_hand() -> None:
    p = PriceConfig(input_per_mtok=2.5, output_per_mtok=10.0, per_call=0.01, batch_discount=0.5)
    assert token_cost(p, 3, 1_000_000, 200_000) == pytest.approx(0.03 + 2.5 + 2.0)
    assert token_cost(p, 3, 1_000_000, 200_000, batch=True) == pytest.approx((0.03 + 2.5 + 2.0) / 2)
    assert token_cost(None, 3, 10, 10) == 0.0


def test_budget_check_projects_the_costliest_finished_iteration() -> None:
    a, b = Usage(judge_calls=10, generated_tokens=100, usd_judge=1.0), Usage(judge_calls=14, generated_tokens=50, usd_judge=0.5)
    budget = BudgetConfig(max_judge_calls=38)
    assert check(budget, 2, [a, b], [], Usage()).over == []  # 24 spent + 14 projected = 38
    over = check(BudgetConfig(max_judge_calls=37), 2, [a, b], [], Usage()).over
    assert over == ["38 judge calls > max_judge_calls 37"]
    # before any iteration the estimate is the projection
    assert check(BudgetConfig(max_generated_tokens=99), 0, [], [], Usage(generated_tokens=100)).over
    assert not check(BudgetConfig(max_usd=2.5), 2, [a, b], [], Usage()).over  # 1.5 spent + 1.0 (the costlier one)
    assert check(BudgetConfig(max_usd=2.49), 2, [a, b], [], Usage()).over


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    srv = FakeOpenAIServer(LiveScript()).start()
    prompts = write_prompts(root / "prompts.jsonl", PLAIN_PROMPTS)
    yield root, srv, prompts
    srv.stop()


def priced_config(root: Path, name: str, srv, prompts: Path, cache: Path, extra: str = "") -> Path:
    cfg = write_config(root, name, srv, prompts, cache)
    cfg.write_text(cfg.read_text() + PRICES + extra)
    return cfg


def test_the_bill_matches_the_servers_usage_and_the_estimate_its_calls(live) -> None:
    root, srv, prompts = live
    cfg = priced_config(root, "bill", srv, prompts, root / "bill.sqlite")
    est = invoke("estimate", "-c", cfg)
    assert_ok(est)
    estimate = json.loads(est.stdout.strip().splitlines()[-1])
    assert set(estimate) >= {"judge_calls", "generation_calls", "input_tokens", "output_tokens", "usd"}
    start = len(srv.requests)
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-bill"))
    gen, judge = chat(srv, start)
    cost = status_json(root / "run-bill")["cost"]
    # the estimate counts exactly the calls a run without retries makes
    assert estimate["generation_calls"] == len(gen) == cost["generation_calls"]
    assert estimate["judge_calls"] == len(judge) == cost["judge_calls"]
    # the bill's tokens are the server's own counts, priced per model
    usage = [(r.body["model"], srv_usage(srv, r)) for r in gen]
    expected_gen = sum((1.0 if m == "gen-a" else 3.0) * u[0] / 1e6 + (2.0 if m == "gen-a" else 4.0) * u[1] / 1e6 for m, u in usage)
    j_in = sum(srv_usage(srv, r)[0] for r in judge)
    j_out = sum(srv_usage(srv, r)[1] for r in judge)
    assert cost["generated_tokens"] == sum(u[1] for _, u in usage)
    assert (cost["judge_input_tokens"], cost["judge_output_tokens"]) == (j_in, j_out)
    assert cost["usd_generation"] == pytest.approx(expected_gen)
    assert cost["usd_judge"] == pytest.approx(10.0 * j_in / 1e6 + 30.0 * j_out / 1e6)
    assert cost["usd_judge_if_batch"] == pytest.approx(cost["usd_judge"] / 2)
    assert cost["usd_per_pair"] == pytest.approx(cost["usd"] / cost["pairs"])
    # the estimate's tokens are approximate (4 characters a token, answers at max_tokens): same order
    assert 0.5 < estimate["input_tokens"] / (sum(u[0] for _, u in usage) + j_in) < 2.0
    assert estimate["output_tokens"] >= cost["output_tokens"]
    # a re-run from the cache makes no call and shows the same bill
    before = len(srv.requests)
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-bill-2"))
    assert len(srv.requests) == before
    assert status_json(root / "run-bill-2")["cost"] == cost
    table = invoke("status", root / "run-bill")
    assert "per preference pair" in table.output and "$" in table.output


def srv_usage(srv, rec) -> tuple[int, int]:
    """(prompt, completion) tokens the fake server reported for a recorded chat request."""
    from servers.fake_openai import _tokens, _words

    msgs = rec.body["messages"]
    prompt = sum(4 + _words(m["content"]) for m in msgs)
    action = LiveScript()(0, rec.body)
    text = action.text
    if text is None:
        text = action.top_logprobs[0][0] if rec.body.get("logprobs") else None
    toks = _tokens(text)
    return prompt, min(len(toks), rec.body.get("max_tokens") or len(toks))


def test_a_budget_stops_cleanly_and_a_raised_budget_continues_to_the_same_dataset(live, tmp_path) -> None:
    root, srv, prompts = live
    # each iteration: 4 prompts x 2 judged responses x 4 aspects = 32 judge calls
    small = priced_config(tmp_path, "small", srv, prompts, tmp_path / "small.sqlite", "budget: {max_judge_calls: 40}\n")
    out = tmp_path / "run-small"
    result = invoke("run", "--config", small, "--out", out)
    assert_ok(result)
    assert "stopped: budget" in result.output
    st = status_json(out)
    assert st["stopped"] == "stopped: budget" and st["iterations_done"] == 1 and st["cost"]["judge_calls"] == 32
    assert "max_judge_calls 40" in st["stopped_detail"]
    again = invoke("resume", out)  # the same budget: stops again at once, calls nothing
    assert_ok(again)
    assert "stopped: budget" in again.output and status_json(out)["iterations_done"] == 1
    assert_ok(invoke("resume", out, "--max-judge-calls", 64))
    st = status_json(out)
    assert st["stopped"] is None and st["iterations_done"] == 2 and st["cost"]["judge_calls"] == 64
    big = priced_config(tmp_path, "big", srv, prompts, tmp_path / "big.sqlite", "budget: {max_judge_calls: 64}\n")
    assert_ok(invoke("run", "--config", big, "--out", tmp_path / "run-big"))
    assert export_jsonl(out, tmp_path / "a.jsonl") == export_jsonl(tmp_path / "run-big", tmp_path / "b.jsonl")


def test_a_pool_run_budget_in_dollars_per_judge_call(tmp_path) -> None:
    """Offline (replay judge): a per-call price makes each annotation cost money."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pool: builtin\nbatch_size: 8\nmethod: dts\nseed: 1\nenn: {heads: 4, hidden: 8, steps: 5}\n"
                   "prices: {replay: {per_call: 0.25}}\nbudget: {max_usd: 10}\n")
    out = tmp_path / "r"
    result = invoke("run", "-c", cfg, "--out", out)
    assert_ok(result)
    st = status_json(out)
    # 2 responses per prompt x 8 prompts x $0.25 = $4 per iteration: two fit in $10, a third does not
    assert st["iterations_done"] == 2 and st["cost"]["usd"] == pytest.approx(8.0) and st["stopped"] == "stopped: budget"
    assert_ok(invoke("resume", out, "--max-usd", 16))
    st2 = status_json(out)
    assert st2["iterations_done"] == 4 and st2["cost"]["usd"] == pytest.approx(16.0)
    cfg2 = tmp_path / "c2.yaml"
    cfg2.write_text(cfg.read_text().replace("max_usd: 10", "max_usd: 16"))
    assert_ok(invoke("run", "-c", cfg2, "--out", tmp_path / "r2"))
    assert export_jsonl(out, tmp_path / "a.jsonl") == export_jsonl(tmp_path / "r2", tmp_path / "b.jsonl")


def test_a_kill_mid_iteration_does_not_move_where_the_budget_stops(tmp_path) -> None:
    """The budget counts the dataset's calls, not this process's: a run SIGKILLed while judging
    and resumed stops at the iteration an uninterrupted run stops at, with the same dataset."""
    import os
    import signal
    import subprocess

    cfg = tmp_path / "c.yaml"
    cfg.write_text("pool: builtin\nbatch_size: 8\nmethod: dts\nseed: 2\nenn: {heads: 4, hidden: 8, steps: 5}\n"
                   "judge: {kind: replay}\nbudget: {max_judge_calls: 50}\n")
    assert_ok(invoke("run", "-c", cfg, "--out", tmp_path / "whole"))
    env = {**os.environ, "ACTIVEPREF_CRASH_AT": "annotate.mid@1"}
    killed = subprocess.run([sys.executable, "-m", "activepref", "run", "-c", str(cfg), "--out", str(tmp_path / "killed")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert_ok(invoke("resume", tmp_path / "killed"))
    a, b = status_json(tmp_path / "whole"), status_json(tmp_path / "killed")
    assert a["stopped"] == b["stopped"] == "stopped: budget"
    assert a["iterations_done"] == b["iterations_done"] == 3 and a["cost"] == b["cost"]
    assert export_jsonl(tmp_path / "whole", tmp_path / "a.jsonl") == export_jsonl(tmp_path / "killed", tmp_path / "b.jsonl")


def delta_pair_config(root: Path, name: str, srv, prompts: Path, strong: str, weak: str) -> Path:
    """The live config with a third generator, gen-c, and delta_pair over two of them."""
    cfg = priced_config(root, name, srv, prompts, root / f"{name}.sqlite")
    lines = cfg.read_text().splitlines(keepends=True)
    gen_b = next(i for i, line in enumerate(lines) if "name: gen-b" in line)
    lines.insert(gen_b + 1, lines[gen_b].replace("gen-b", "gen-c"))
    text = "".join(lines).replace("method: dts\n", f"method: delta_pair\nmethod_options: {{strong: {strong}, weak: {weak}}}\n")
    cfg.write_text(text + "  gen-c: {input_per_mtok: 100.0, output_per_mtok: 100.0}\n")
    return cfg


def test_delta_pair_asks_only_its_two_models_and_pays_only_for_them(live) -> None:
    """delta_pair only ever pairs its strong and weak models' answers: the third generator is
    never asked, and neither the estimate nor the bill counts it."""
    from test_live_server import BATCH, ITERATIONS, SAMPLES

    root, srv, prompts = live
    cfg = delta_pair_config(root, "dp", srv, prompts, "gen-b", "gen-a")
    est = invoke("estimate", "-c", cfg)
    assert_ok(est)
    estimate = json.loads(est.stdout.strip().splitlines()[-1])
    start = len(srv.requests)
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-dp"))
    gen, judge = chat(srv, start)
    assert sorted({r.body["model"] for r in gen}) == ["gen-a", "gen-b"] and judge == []
    assert len(gen) == BATCH * ITERATIONS * SAMPLES * 2 == estimate["generation_calls"]
    cost = status_json(root / "run-dp")["cost"]
    assert cost["generation_calls"] == len(gen) and cost["judge_calls"] == 0
    usage = [(r.body["model"], srv_usage(srv, r)) for r in gen]
    assert cost["usd_generation"] == pytest.approx(sum(
        (1.0 if m == "gen-a" else 3.0) * u[0] / 1e6 + (2.0 if m == "gen-a" else 4.0) * u[1] / 1e6 for m, u in usage))
    rows = export_jsonl(root / "run-dp", root / "dp.jsonl")
    assert len(rows) == BATCH * ITERATIONS  # one pair per prompt, nothing judged


def test_delta_pair_naming_a_model_the_run_lacks_is_refused_before_any_call(live) -> None:
    root, srv, prompts = live
    cfg = delta_pair_config(root, "dp-bad", srv, prompts, "gen-z", "gen-a")
    start = len(srv.requests)
    for args in (("check", "-c", cfg), ("estimate", "-c", cfg), ("run", "--config", cfg, "--out", root / "run-dp-bad")):
        result = invoke(*args)
        assert result.exit_code != 0
        assert "'gen-z' is not a model of generation.models" in " ".join(result.output.split()), result.output
    assert len(srv.requests) == start
