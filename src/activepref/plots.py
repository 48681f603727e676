"""Plots a person would rather look at than read (matplotlib, the `plots` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activepref.extras import require


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Held-out accuracy (left) and chosen-minus-rejected oracle reward (right) against
    annotations used, one line per method."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, history in histories.items():
        ann = [h.get("annotations", 0) for h in history]
        ax_acc.plot(ann, [h.get("heldout_accuracy", float("nan")) for h in history], marker="o", ms=3, label=name)
        gap = [h.get("mean_chosen_reward", float("nan")) - h.get("mean_rejected_reward", float("nan")) for h in history]
        ax_gap.plot(ann, gap, marker="o", ms=3, label=name)
    ax_acc.set(xlabel="annotations (judge calls)", ylabel="held-out pairwise accuracy", title="reward model quality")
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_gap.set(xlabel="annotations (judge calls)", ylabel="mean oracle(chosen) - oracle(rejected)", title="dataset margin")
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
