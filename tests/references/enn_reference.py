"""Per-head reference of the ENN: one nn.Sequential MLP per head, a Python loop over heads,
and eq. 5 (001) written out literally with autograd, anchor term included.

Shares the fast version's initialisation (``init_params``) so both start from the same
weights; used by tests (exact agreement) and by benchmarks/enn_speed.py (speed ratio).
"""

from __future__ import annotations

import torch
from torch import nn

from activepref.model.enn import ENNShape, init_params


def build_heads(shape: ENNShape, seed: int) -> nn.ModuleList:
    """K independent MLPs holding the same numbers as ``init_params(shape, seed)``."""
    p = init_params(shape, seed)
    d, h = shape.dim, shape.hidden
    heads = nn.ModuleList()
    for k in range(shape.heads):
        layers: list[nn.Module] = []
        first = nn.Linear(d, h)
        first.weight.data = p["w0"][:, k * h : (k + 1) * h].t().clone()
        first.bias.data = p["b0"][k * h : (k + 1) * h].clone()
        layers += [first, nn.ReLU()]
        for i in range(1, shape.layers):
            lin = nn.Linear(h, h)
            lin.weight.data = p[f"w{i}"][k].t().clone()
            lin.bias.data = p[f"b{i}"][k].clone()
            layers += [lin, nn.ReLU()]
        out = nn.Linear(h, 1)
        out.weight.data = p["w_out"][k].view(1, h).clone()
        out.bias.data = p["b_out"][k].view(1).clone()
        layers.append(out)
        heads.append(nn.Sequential(*layers))
    return heads


def reference_loss(
    heads: nn.ModuleList,
    anchors: list[list[torch.Tensor]],
    x_chosen: torch.Tensor,
    x_rejected: torch.Tensor,
    gamma: float,
    zeta: float,
) -> torch.Tensor:
    """001 eq. 5: 1/K sum_k (E[-log s(r+ - r-)] + gamma E[(r+ + r-)^2] + zeta ||phi_k - phi~_k||^2)."""
    total = torch.zeros(())
    for head, anchor in zip(heads, anchors):
        rc = head(x_chosen).squeeze(1)
        rr = head(x_rejected).squeeze(1)
        term = -torch.nn.functional.logsigmoid(rc - rr).mean() + gamma * ((rc + rr) ** 2).mean()
        term = term + zeta * sum(((p - a) ** 2).sum() for p, a in zip(head.parameters(), anchor))
        total = total + term
    return total / len(heads)


def snapshot(heads: nn.ModuleList) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in head.parameters()] for head in heads]


def reference_rewards(heads: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [K, n]."""
    with torch.no_grad():
        return torch.stack([head(x).squeeze(1) for head in heads])
