"""The APL referee over both judge kinds, against the fake OpenAI-compatible server."""

from __future__ import annotations

import re

import pytest
from servers.fake_openai import Action, FakeOpenAIServer

from activepref.apl.config import APLJudgeConfig
from activepref.apl.referee import Referee
from activepref.backends import make_backend
from activepref.core.cache import RequestCache
from activepref.pools.records import Prompt

PROMPTS = [Prompt("p1", "say something good"), Prompt("p2", "say anything"), Prompt("p3", "rate me")]


def likert_script(n: int, body: dict) -> Action | None:
    """Expected score = 1 + number of 'good' in the response (capped at 5); 'garbage' -> no digit."""
    user = body["messages"][-1]["content"]
    response = re.search(r"## Response\n(.*?)\n\n## Question", user, re.S).group(1)
    if "garbage" in response:
        return Action.no_digit()
    k = min(1 + response.split().count("good"), 5)
    return Action.reply(str(k), top_logprobs=[(str(k), -0.01), ("The", -5.0)])


def referee(srv: FakeOpenAIServer, tmp_path, kind: str, **kw) -> Referee:
    cfg = APLJudgeConfig.model_validate({"kind": kind, "model": {"backend": "openai", "model": "j", "base_url": srv.base_url,
                                                                  "api_key_env": "NO_SUCH_KEY_VAR", "max_retries": 0}, **kw})
    return Referee(cfg, make_backend(cfg.model), RequestCache(tmp_path / "cache.sqlite"))


def test_likert_referee_prefers_the_higher_expected_score_and_reports_ties_and_failures(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "x")
    with FakeOpenAIServer(likert_script) as srv:
        ref = referee(srv, tmp_path, "likert", max_retries=1)
        pairs = [("bad", "good good"), ("good", "fine"), ("garbage", "good")]
        verdicts = ref.compare(PROMPTS, pairs, seed=0)
        assert [v.winner for v in verdicts] == [1, 0, None]
        assert [v.outcome for v in verdicts] == ["ok", "ok", "failure"]
        assert "no digit" in verdicts[2].detail
        tie = ref.compare(PROMPTS[:1], [("one", "two")], seed=0)[0]
        assert tie.outcome == "tie" and tie.winner is None
        same = ref.compare(PROMPTS[:1], [("x y", "x y")], seed=0)[0]
        assert same.outcome == "tie" and same.detail == "identical completions"


@pytest.mark.parametrize("both_orders", [False, True])
def test_pairwise_referee_cancels_the_position_with_random_order(tmp_path, monkeypatch, both_orders) -> None:
    """A judge that always answers "A" (pure position bias): with random order each pair goes
    to whichever completion was shown first; asked in both orders, the two answers cancel."""
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "x")
    with FakeOpenAIServer(lambda n, body: Action.reply("A", top_logprobs=[("A", -0.1), ("B", -2.4)])) as srv:
        ref = referee(srv, tmp_path, "pairwise", both_orders=both_orders)
        prompts = [Prompt(f"q{i}", f"question {i}") for i in range(40)]
        verdicts = ref.compare(prompts, [(f"first {i}", f"second {i}") for i in range(40)], seed=3)
        winners = [v.winner for v in verdicts]
        if both_orders:  # P(first) is 0.9 in one order and 0.1 in the other: the mean 0.5 gives no edge
            assert len(srv.chat_requests) == 80
            assert winners == [None] * 40 and all(v.outcome == "tie" for v in verdicts)  # no side wins a cancelled pair
        else:
            assert len(srv.chat_requests) == 40
            assert 8 <= sum(winners) <= 32  # about half, not all on one side
