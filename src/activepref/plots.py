"""Plots a person would rather look at than read (matplotlib, the `plots` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activepref.extras import MissingExtraError, require


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (the `plots` extra)."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots_unavailable() -> str | None:
    """Why plots cannot be drawn here (the missing extra, as an install hint), or None."""
    try:
        _pyplot()
    except MissingExtraError as exc:
        return str(exc)
    return None


def _save(fig: Any, path: str | Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(histories: dict[str, list[list[dict[str, Any]]]], path: str | Path, title: str = "") -> Path:
    """Held-out accuracy (left) and chosen-minus-rejected oracle reward (right) against
    annotations used: per method the mean over its seeds' runs (histories[method] holds one
    history per seed), the seeds' range shaded. Seeds are aligned by iteration."""
    plt = _pyplot()
    import numpy as np

    def series(history: list[dict[str, Any]], key: str) -> list[float]:
        if key == "gap":
            return [h.get("mean_chosen_reward", float("nan")) - h.get("mean_rejected_reward", float("nan")) for h in history]
        return [h.get(key, float("nan")) for h in history]

    fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, runs in histories.items():
        runs = [h for h in runs if h]
        if not runs:
            continue
        n = min(len(h) for h in runs)
        ann = np.mean([[h[i].get("annotations", 0) for i in range(n)] for h in runs], axis=0)
        for ax, key in ((ax_acc, "heldout_accuracy"), (ax_gap, "gap")):
            values = np.asarray([series(h[:n], key) for h in runs], dtype=np.float64)  # [seeds, n]
            (line,) = ax.plot(ann, np.nanmean(values, axis=0), marker="o", ms=3, label=name)
            if len(runs) > 1:
                ax.fill_between(ann, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(), alpha=0.2)
    ax_acc.set(xlabel="annotations (judge calls)", ylabel="held-out pairwise accuracy", title="reward model quality")
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_gap.set(xlabel="annotations (judge calls)", ylabel="mean oracle(chosen) - oracle(rejected)", title="dataset margin")
    ax_acc.legend(fontsize=8)
    return _save(fig, path, title)


def plot_run(records: list[dict[str, Any]], summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """A finished live run at a glance: judge scores of chosen vs rejected per iteration
    (left) and judge requests spent vs judging every candidate (right).

    records: export rows (score_chosen, score_rejected, iteration)."""
    plt = _pyplot()
    import numpy as np

    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    iters = sorted({r["iteration"] for r in records})
    for key, label, offset in (("score_chosen", "chosen", -0.18), ("score_rejected", "rejected", 0.18)):
        means = [np.mean([r[key] for r in records if r["iteration"] == it and r[key] is not None] or [np.nan]) for it in iters]
        ax_s.bar(np.asarray(iters) + offset, means, width=0.36, label=label)
        for it in iters:
            ys = [r[key] for r in records if r["iteration"] == it and r[key] is not None]
            ax_s.scatter([it + offset] * len(ys), ys, s=8, color="black", zorder=3)
    ax_s.set(xlabel="iteration", ylabel="judge score (1-5, expected)", title="chosen vs rejected", ylim=(1, 5))
    ax_s.set_xticks(iters)
    ax_s.legend(fontsize=8)
    spent = summary.get("judge_requests") or 0
    pairs = summary.get("preference_pairs") or 0
    full = (summary.get("judge_requests_per_pair_if_all_judged") or 0) * pairs
    ax_c.bar(["active (this run)", "judge every candidate"], [spent, full], color=["tab:green", "tab:gray"])
    ax_c.set(ylabel="judge requests", title=f"annotation cost for {pairs} preference pairs")
    return _save(fig, path, title)
