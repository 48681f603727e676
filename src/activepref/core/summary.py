"""What a run cost and produced: calls, cache hits and tokens per stage, and judge requests
per preference pair next to what annotating every candidate would have cost."""

from __future__ import annotations

from typing import Any

from activepref.core.store import STATUS_GENERATED, RunStore


def run_summary(store: RunStore) -> dict[str, Any]:
    stats = store.call_stats()
    pairs = store.count("preferences")
    judged = store.count("scores") + store.count("judge_failures")  # responses sent to a scoring judge
    compared = store.count("comparisons") + store.count("comparison_failures")  # pairs sent to a comparing judge
    selected_prompts: set[int] = set()
    for rec in store.iterations():
        if rec.status != STATUS_GENERATED and rec.proposal is not None:
            selected_prompts.update(rec.prompt_idxs)
    _, response_prompt = store.responses()
    candidates = int(sum(1 for p in response_prompt if int(p) in selected_prompts))
    judge = stats.get("judge", {})
    judge_requests = judge.get("calls", 0) + judge.get("cache_hits", 0)
    per_response = judge_requests / judged if judge_requests and judged else 1.0  # Likert: 4 aspects per response
    both_orders, agreed = store.position_consistency()
    out: dict[str, Any] = {
        "preference_pairs": pairs,
        "responses_judged": judged,
        "candidates_in_selected_prompts": candidates,
        "pairs_compared": compared,
        "judge_requests": judge_requests if judge_requests else judged + compared,
        "judge_requests_per_pair": (judge_requests or judged + compared) / pairs if pairs else None,
        # a comparing judge has no 'judge every candidate' baseline
        "judge_requests_per_pair_if_all_judged": candidates * per_response / pairs if pairs and not compared else None,
        "position_consistency": agreed / both_orders if both_orders else None,
        "pairs_asked_both_orders": both_orders,
        "stages": stats,
        "generation_failures": store.count("generation_failures"),
        "judge_failures": store.judge_failure_count(),
        "cost": _bill(store),
    }
    return out


def _bill(store: RunStore) -> dict[str, Any] | None:
    """The run's bill at its config's price table (None for a store without a config)."""
    from activepref.config import config_from_json
    from activepref.core.costs import bill

    text = store.meta("config")
    return bill(store, config_from_json(text)) if text else None


def format_summary(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (label, value) for a two-column table."""
    rows = [
        ("preference pairs", str(summary["preference_pairs"])),
        ("responses judged", f"{summary['responses_judged']} of {summary['candidates_in_selected_prompts']} candidates"),
    ]
    if summary.get("pairs_compared"):
        rows.append(("pairs compared", str(summary["pairs_compared"])))
    per_pair, all_pair = summary["judge_requests_per_pair"], summary["judge_requests_per_pair_if_all_judged"]
    if per_pair is not None:
        baseline = f" (judging every candidate: {all_pair:.2f})" if all_pair is not None else ""
        rows.append(("judge requests per pair", f"{per_pair:.2f}{baseline}"))
    if summary.get("position_consistency") is not None:
        rows.append((
            "position consistency",
            f"{summary['position_consistency']:.3f} of {summary['pairs_asked_both_orders']} pairs asked in both orders",
        ))
    for stage, s in summary["stages"].items():
        rows.append((
            f"{stage} calls",
            f"{s['calls']} made, {s['cache_hits']} from cache, {s['failures']} failed; "
            f"tokens in {s['prompt_tokens']} (cached {s['cached_prompt_tokens']}), out {s['completion_tokens']}",
        ))
    if summary["generation_failures"] or summary["judge_failures"]:
        rows.append(("failures", f"generation {summary['generation_failures']}, judge {summary['judge_failures']}"))
    if summary.get("cost"):
        rows += format_cost(summary["cost"])
    return rows



def format_cost(cost: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (label, value) of a run's bill (activepref.core.costs.bill)."""
    judge_mode = cost.get("judge_mode", "online")
    embedding = f", embedding ${cost['usd_embedding']:.4f}" if cost.get("embedding_calls") else ""
    rows = [("cost", f"${cost['usd']:.4f} (generation ${cost['usd_generation']:.4f}, judge ${cost['usd_judge']:.4f}, "
                     f"{judge_mode}{embedding})")]
    if judge_mode != "online" and cost.get("usd_judge_if_online") is not None:
        rows.append(("judge online would cost", f"${cost['usd_judge_if_online']:.4f}"))
    elif cost.get("usd_judge_if_batch"):
        rows.append(("judge in batch mode would cost", f"${cost['usd_judge_if_batch']:.4f}"))
    if cost.get("pairs"):
        rows.append((
            "per preference pair",
            f"${cost['usd_per_pair']:.5f}, {cost['judge_calls_per_pair']:.2f} judge calls, "
            f"{cost['generated_tokens_per_pair']:.1f} generated tokens",
        ))
    vectors = f", embedding {cost['embedding_calls']} vectors" if cost.get("embedding_calls") else ""
    rows.append(("calls behind the dataset", f"generation {cost['generation_calls']}, judge {cost['judge_calls']}{vectors}; "
                 f"tokens in {cost['input_tokens']}, out {cost['output_tokens']}"))
    if cost.get("unpriced"):
        rows.append(("not in the price table", ", ".join(cost["unpriced"])))
    return rows
