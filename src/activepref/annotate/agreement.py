"""Agreement between human annotators, and the vote that turns their labels into a preference.

Labels are nominal: ``first``, ``second`` or ``tie`` (a skip is not a label). Plain functions
over plain sequences; the slow obvious versions live in ``tests/references/agreement_reference.py``.

- :func:`majority_verdict`: the plurality of the votes; a tie in the count (e.g. one ``first``
  and one ``second``) is a ``tie``.
- :func:`cohens_kappa`: Cohen's κ of two annotators over the pairs both labelled
  (Cohen 1960: (p_o - p_e) / (1 - p_e), p_e from each annotator's own label frequencies).
- :func:`krippendorff_alpha`: Krippendorff's α for nominal data, any number of annotators and
  missing labels (Krippendorff 2011, "Computing Krippendorff's alpha-reliability": α = 1 - D_o / D_e
  from the coincidence matrix of pairable values).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

VERDICTS = ("first", "second", "tie")


def majority_verdict(votes: Sequence[str]) -> str:
    """The label most votes name; ``tie`` when the top count is shared (or there are no votes)."""
    counts = Counter(votes).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return "tie"
    return counts[0][0]


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """κ of two annotators' labels of the same items (``first[i]``, ``second[i]`` label item i).
    None when undefined: no items, or both annotators always gave one and the same label
    (chance agreement 1)."""
    if len(first) != len(second):
        raise ValueError(f"cohens_kappa: {len(first)} and {len(second)} labels; give one per shared item")
    n = len(first)
    if n == 0:
        return None
    labels = sorted(set(first) | set(second))
    code = {c: k for k, c in enumerate(labels)}
    a = np.fromiter((code[x] for x in first), dtype=np.int64, count=n)  # [n]
    b = np.fromiter((code[x] for x in second), dtype=np.int64, count=n)  # [n]
    observed = float(np.mean(a == b))
    chance = float(np.bincount(a, minlength=len(labels)) @ np.bincount(b, minlength=len(labels))) / n**2
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def krippendorff_alpha(units: Sequence[Sequence[str]]) -> float | None:
    """Nominal α over ``units``: each unit (a pair) is the labels its annotators gave it.
    Units with fewer than two labels carry no pairable values and are left out. None when
    undefined: fewer than two pairable values, or every pairable value the same label."""
    pairable = [u for u in units if len(u) >= 2]
    if not pairable:
        return None
    labels = sorted({x for u in pairable for x in u})
    code = {c: k for k, c in enumerate(labels)}
    counts = np.zeros((len(pairable), len(labels)))  # [u, c]: how often unit u got label c
    for i, unit in enumerate(pairable):
        for x in unit:
            counts[i, code[x]] += 1
    per_unit = counts.sum(axis=1)  # [u] m_u
    weight = 1.0 / (per_unit - 1.0)  # [u]
    # Coincidences o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1)
    coincidence = (counts * weight[:, None]).T @ counts - np.diag((counts * weight[:, None]).sum(axis=0))  # [c, c]
    marginal = coincidence.sum(axis=1)  # [c] n_c
    total = marginal.sum()  # n
    expected_pairs = total**2 - float(marginal @ marginal)  # sum over c != k of n_c n_k
    if expected_pairs <= 0:
        return None
    observed_disagreement = coincidence.sum() - np.trace(coincidence)  # sum over c != k of o_ck
    return float(1.0 - (total - 1.0) * observed_disagreement / expected_pairs)
