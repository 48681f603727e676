"""The ensemble reward model (ENN, 001 §4.2 and App. B): K MLP heads on frozen features.

All heads run as one tensor program: the first layers of every head form a single
[d, K*h] GEMM, deeper layers are batched matmuls over the head axis. Training minimises
001 eq. 5 averaged over heads,

    J = 1/K sum_k ( E[-log s(r_k(x,y+) - r_k(x,y-))] + gamma E[(r_k(x,y+) + r_k(x,y-))^2]
                    + zeta ||phi_k - phi~_k||^2 ),

with phi~_k the head's own random initialisation. The anchor term's gradient
(2 zeta / K)(phi - phi~) is analytic: Adam's L2 weight decay supplies (2 zeta / K) phi and
the constant -(2 zeta / K) phi~ is folded into the weight-gradient GEMM of the first layer
(and added directly for the small deeper layers), so the prior costs no extra pass over
the big matrix.

Training does not go through autograd: ``train_step`` writes every gradient with explicit
GEMMs into buffers allocated once per ``fit`` (``TrainWorkspace``), in a head-major,
transposed layout ([K, h, n]) in which no layer needs a transposing copy. Autograd's version of
the same step spent about a third of its time allocating, copying and transposing
(``benchmarks/enn_speed.py``); ``tests/test_enn.py`` checks the gradients against autograd.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from activepref.config import ENNConfig
from activepref.model.numerics import flush_denormal_enabled

if TYPE_CHECKING:
    from activepref.core.features import FeatureMatrix

# 001 Tables 14-15 (hyperparameters of the ENN and its training): defined once, in ENNConfig.
_DEFAULTS = ENNConfig()
DEFAULT_HEADS = _DEFAULTS.heads
DEFAULT_HIDDEN = _DEFAULTS.hidden
DEFAULT_LAYERS = _DEFAULTS.layers
DEFAULT_LR = _DEFAULTS.lr
DEFAULT_STEPS = _DEFAULTS.steps
DEFAULT_TRAIN_BATCH = _DEFAULTS.batch_size
DEFAULT_GAMMA = _DEFAULTS.gamma
DEFAULT_ZETA = _DEFAULTS.zeta
DEFAULT_ZETA_DECAY = _DEFAULTS.zeta_decay
DEFAULT_RHO = _DEFAULTS.rho


@dataclass(frozen=True)
class ENNShape:
    dim: int
    heads: int = DEFAULT_HEADS
    hidden: int = DEFAULT_HIDDEN
    layers: int = DEFAULT_LAYERS

    def __post_init__(self) -> None:
        if self.layers < 1 or self.heads < 2 or self.hidden < 1 or self.dim < 1:
            raise ValueError(f"invalid ENN shape {self}: need layers >= 1, heads >= 2")


def init_params(shape: ENNShape, seed: int) -> dict[str, torch.Tensor]:
    """Independent PyTorch-Linear-style init per head: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Names: w0 [d, K*h], b0 [K*h]; w{i} [K, h, h], b{i} [K, h] for deeper hidden layers;
    w_out [K, h], b_out [K].
    """
    g = torch.Generator().manual_seed(seed)
    d, k, h = shape.dim, shape.heads, shape.hidden

    def uniform(size: tuple[int, ...], fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(size, generator=g, dtype=torch.float32) * 2 - 1) * bound

    params = {"w0": uniform((d, k * h), d), "b0": uniform((k * h,), d)}
    for i in range(1, shape.layers):
        params[f"w{i}"] = uniform((k, h, h), h)
        params[f"b{i}"] = uniform((k, h), h)
    params["w_out"] = uniform((k, h), h)
    params["b_out"] = uniform((k,), h)
    return params


def last_hidden_heads(params: dict[str, torch.Tensor], x: torch.Tensor, shape: ENNShape) -> torch.Tensor:
    """Every head's last hidden layer (the features before its output layer). x: [n, d] -> [K, n, h]."""
    k, h = shape.heads, shape.hidden
    z = torch.addmm(params["b0"], x, params["w0"])  # [n, K*h]
    a = torch.relu(z).view(x.shape[0], k, h).transpose(0, 1)  # [K, n, h]
    for i in range(1, shape.layers):
        a = torch.relu(torch.baddbmm(params[f"b{i}"].unsqueeze(1), a, params[f"w{i}"]))  # [K, n, h]
    return a


def forward_heads(params: dict[str, torch.Tensor], x: torch.Tensor, shape: ENNShape) -> torch.Tensor:
    """Rewards of every head (prediction; training uses ``train_step``). x: [n, d] -> [K, n]."""
    a = last_hidden_heads(params, x, shape)  # [K, n, h]
    return torch.baddbmm(params["b_out"].view(shape.heads, 1, 1), a, params["w_out"].unsqueeze(2)).squeeze(2)  # [K, n]


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, gamma: float) -> torch.Tensor:
    """Data part of 001 eq. 5 averaged over heads. r_*: [K, B] -> scalar."""
    nll = -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean(dim=1)  # [K]
    centering = gamma * (r_chosen + r_rejected).pow(2).mean(dim=1)  # [K]
    return (nll + centering).mean()


@dataclass
class TrainWorkspace:
    """Buffers of one training step for n = 2B rows, reused by every step of a ``fit``.

    hidden[i]: [K, h, n] every head's activations of hidden layer i (transposed: rows are
    units, columns are the minibatch rows), grad and grad_spare: [K, h, n] the
    back-propagated gradient (two, so that a layer's GEMM never writes its own input),
    reward: [K, 1, n], grads: one gradient buffer per parameter (the optimiser reads them),
    drift: one buffer per parameter but w0 for the anchor term's phi - phi~.
    """

    hidden: list[torch.Tensor]
    grad: torch.Tensor
    grad_spare: torch.Tensor
    reward: torch.Tensor
    grads: dict[str, torch.Tensor]
    drift: dict[str, torch.Tensor]

    @staticmethod
    def allocate(params: dict[str, torch.Tensor], shape: ENNShape, rows: int) -> TrainWorkspace:
        k, h = shape.heads, shape.hidden
        ref = params["w0"]

        def empty(*size: int) -> torch.Tensor:
            return torch.empty(size, dtype=ref.dtype, device=ref.device)

        return TrainWorkspace(
            hidden=[empty(k, h, rows) for _ in range(shape.layers)],
            grad=empty(k, h, rows),
            grad_spare=empty(k, h, rows),
            reward=empty(k, 1, rows),
            grads={n: torch.empty_like(p) for n, p in params.items()},
            drift={n: torch.empty_like(p) for n, p in params.items() if n != "w0"},
        )


def train_step(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    shape: ENNShape,
    gamma: float,
    w0_grad_offset: torch.Tensor,
    work: TrainWorkspace,
) -> float:
    """Forward and backward of 001 eq. 5's data part (``bradley_terry_loss``) on one minibatch.

    x: [2B, d], the B chosen rows then the B rejected rows. Writes d loss / d param into
    ``work.grads`` (w0's starts from ``w0_grad_offset`` [d, K*h], which carries the anchor
    term's constant part; the other anchor terms are the caller's) and returns the loss.

    Layout: hidden layer i is kept as hT_i [K, h, n] = W_iᵀ hT_{i-1} + b_i, so the first
    layer is one GEMM W0ᵀ xᵀ giving [K*h, n] = [K, h, n] directly, deeper layers are batched
    GEMMs over heads, and every gradient GEMM reads its operands in place (BLAS transposes).
    """
    k, h, n = shape.heads, shape.hidden, x.shape[0]
    batch = n // 2
    hidden, g, spare, grads = work.hidden, work.grad, work.grad_spare, work.grads
    # Forward. hT_0 = relu(W0ᵀ xᵀ + b0): [K*h, d] @ [d, n] -> [K*h, n]
    torch.addmm(params["b0"].unsqueeze(1), params["w0"].t(), x.t(), out=hidden[0].view(k * h, n))
    torch.relu_(hidden[0])
    for i in range(1, shape.layers):
        # hT_i = W_iᵀ hT_{i-1} + b_i: [K, h, h] @ [K, h, n] -> [K, h, n]
        torch.baddbmm(params[f"b{i}"].unsqueeze(2), params[f"w{i}"].transpose(1, 2), hidden[i - 1], out=hidden[i])
        torch.relu_(hidden[i])
    top = hidden[-1]
    # r = w_outᵀ hT_L + b_out: [K, 1, h] @ [K, h, n] -> [K, 1, n]
    torch.baddbmm(params["b_out"].view(k, 1, 1), params["w_out"].unsqueeze(1), top, out=work.reward)
    r = work.reward.view(k, n)
    r_chosen, r_rejected = r[:, :batch], r[:, batch:]  # [K, B]
    margin = r_chosen - r_rejected  # [K, B]
    total = r_chosen + r_rejected  # [K, B]
    loss = float((-torch.nn.functional.logsigmoid(margin).mean(1) + gamma * total.pow(2).mean(1)).mean())
    # d loss / d r, averaged over heads and pairs: -s(-m) + 2 gamma t for the chosen row,
    # +s(-m) + 2 gamma t for the rejected row.
    scale = 1.0 / (k * batch)
    push = torch.sigmoid(-margin).mul_(scale)  # [K, B]
    centre = total.mul(2.0 * gamma * scale)  # [K, B]
    dr = torch.cat([centre - push, centre + push], dim=1).view(k, 1, n)  # [K, 1, n]
    # Output layer: d w_out = hT_L dr^T [K, h, 1]; d b_out = sum over rows.
    torch.bmm(top, dr.transpose(1, 2), out=grads["w_out"].view(k, h, 1))
    torch.sum(dr.view(k, n), dim=1, out=grads["b_out"])
    torch.mul(params["w_out"].unsqueeze(2), dr, out=g)  # [K, h, 1] * [K, 1, n] -> [K, h, n]
    torch.ops.aten.threshold_backward.grad_input(g, top, 0.0, grad_input=g)
    for i in range(shape.layers - 1, 0, -1):
        below = hidden[i - 1]
        # d W_i = hT_{i-1} gᵀ: [K, h, n] @ [K, n, h]; d b_i = row sums of g.
        torch.bmm(below, g.transpose(1, 2), out=grads[f"w{i}"])
        torch.sum(g, dim=2, out=grads[f"b{i}"])
        # gradient of hT_{i-1} = W_i g, masked by its ReLU, into the other buffer.
        torch.bmm(params[f"w{i}"], g, out=spare)
        torch.ops.aten.threshold_backward.grad_input(spare, below, 0.0, grad_input=spare)
        g, spare = spare, g
    flat = g.view(k * h, n)
    # d W0 = offset + xᵀ gᵀ: [d, n] @ [n, K*h]; d b0 = row sums of g.
    torch.addmm(w0_grad_offset, x.t(), flat.t(), out=grads["w0"])
    torch.sum(flat, dim=1, out=grads["b0"])
    return loss


class ReplayBuffer:
    """Preference pairs as rows into the feature matrix, with amortised O(1) appends.

    Storage doubles when full; earlier entries are never copied again by later appends
    beyond the geometric growth, and sampling never rebuilds the buffer.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._pairs = np.empty((max(capacity, 1), 2), dtype=np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, chosen: np.ndarray, rejected: np.ndarray) -> None:
        """chosen, rejected: [n] feature-row indices."""
        n = len(chosen)
        if self._size + n > len(self._pairs):
            grown = np.empty((max(2 * len(self._pairs), self._size + n), 2), dtype=np.int64)
            grown[: self._size] = self._pairs[: self._size]
            self._pairs = grown
        self._pairs[self._size : self._size + n, 0] = chosen
        self._pairs[self._size : self._size + n, 1] = rejected
        self._size += n

    def extend(self, pairs: np.ndarray) -> None:
        """Append [n, 2] (chosen row, rejected row) pairs, in order (e.g. from ``RunStore.replay_pairs``)."""
        if len(pairs):
            self.append(pairs[:, 0], pairs[:, 1])

    def pairs(self) -> np.ndarray:
        """[size, 2] view (chosen row, rejected row)."""
        return self._pairs[: self._size]


@dataclass
class TrainConfig:
    lr: float = DEFAULT_LR
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_TRAIN_BATCH
    gamma: float = DEFAULT_GAMMA
    rho: int = DEFAULT_RHO


class EnsembleRewardModel:
    """K-head ENN with its anchors, Adam state and the current zeta.

    ``fit`` runs one iteration's training (001 App. B.2); ``predict`` gives mean and std
    over heads; ``state_dict``/``load_state_dict`` make a training step resumable.
    """

    def __init__(self, shape: ENNShape, seed: int, zeta: float = DEFAULT_ZETA, lr: float = DEFAULT_LR, device: str = "cpu") -> None:
        self.shape = shape
        self.device = torch.device(device)
        # Initialised on the CPU generator, so a seed gives the same heads on every device.
        self.anchors = {n: t.to(self.device) for n, t in init_params(shape, seed).items()}
        self.params = {n: t.clone().requires_grad_(True) for n, t in self.anchors.items()}
        self.zeta = zeta
        # Group 0 is the big first-layer matrix (anchor gradient split between Adam's weight
        # decay and the GEMM offset); group 1 holds the small layers (exact c * (phi - phi~)).
        small = [p for n, p in self.params.items() if n != "w0"]
        self.optimizer = torch.optim.Adam(
            [{"params": [self.params["w0"]]}, {"params": small, "weight_decay": 0.0}], lr=lr, fused=True
        )

    # -- prediction -------------------------------------------------------------------
    @torch.no_grad()
    def rewards(self, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """features [n, d] -> rewards of every head [K, n]."""
        outs = [
            forward_heads(self.params, features[i : i + chunk].to(self.device), self.shape).cpu()
            for i in range(0, len(features), chunk)
        ]
        return torch.cat(outs, dim=1) if outs else torch.empty(self.shape.heads, 0)

    @torch.no_grad()
    def last_layer_features(self, features: torch.Tensor, chunk: int = 8192) -> np.ndarray:
        """Φ of 002 §3.3 per head: each head's last hidden layer, in which that head's reward
        is linear. features [n, d] -> [K, n, h] float64."""
        out = np.empty((self.shape.heads, len(features), self.shape.hidden))
        for i in range(0, len(features), chunk):
            out[:, i : i + chunk] = last_hidden_heads(self.params, features[i : i + chunk].to(self.device), self.shape).double().cpu().numpy()
        return out

    def predict(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """features [n, d] -> (mean [n], std [n]) over heads, float64."""
        r = self.rewards(features)  # [K, n]
        return r.mean(0).double().numpy(), r.std(0).double().numpy()

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        features: torch.Tensor | FeatureMatrix,
        buffer: ReplayBuffer,
        config: TrainConfig,
        train_size: int,
        rng: np.random.Generator,
        on_step: Callable[[int], None] | None = None,
    ) -> float:
        """One iteration of training on D_train drawn without replacement from the buffer.

        features: [N, d] all candidate features (a tensor or a FeatureMatrix: only D_train's rows
        are read); train_size = |D_train| = min(|B|, b * rho).
        Minibatches walk a fresh permutation of D_train, reshuffled at each pass.
        ``on_step(step)`` runs after each optimiser step. Returns the mean data loss.
        """
        pairs = buffer.pairs()
        if len(pairs) == 0 or config.steps == 0:
            return float("nan")
        # Adam's second moments of tiny gradients go subnormal, which is ~100x slower on x86.
        # This reaches the calling thread only, and the caller's mode is restored afterwards;
        # the command line flushes in every thread from the start (activepref.model.numerics).
        before = flush_denormal_enabled()
        torch.set_flush_denormal(True)
        try:
            return self._fit(features, pairs, config, train_size, rng, on_step)
        finally:
            torch.set_flush_denormal(before)

    def _fit(
        self,
        features: torch.Tensor | FeatureMatrix,
        pairs: np.ndarray,
        config: TrainConfig,
        train_size: int,
        rng: np.random.Generator,
        on_step: Callable[[int], None] | None,
    ) -> float:
        train = pairs[rng.choice(len(pairs), size=min(len(pairs), train_size), replace=False)]  # [T, 2]
        batch = min(config.batch_size, len(train))
        # Every step's minibatch is drawn up front (the same draws, in the same order, as walking
        # a permutation of D_train and reshuffling when it runs out), so that only the rows the
        # steps touch are read: at most steps * 2B, however large D_train (the whole buffer when
        # b * rho exceeds it) has grown. A paper-scale pool's features stay on disk.
        order, cursor = rng.permutation(len(train)), 0
        minibatches = []
        for _ in range(config.steps):
            if cursor + batch > len(order):
                order, cursor = rng.permutation(len(train)), 0
            minibatches.append(train[order[cursor : cursor + batch]])  # [B, 2]
            cursor += batch
        steps_pairs = np.stack(minibatches)  # [S, B, 2]
        rows_needed, local = np.unique(steps_pairs, return_inverse=True)
        x_train = features[torch.from_numpy(rows_needed)].to(self.device)  # [u, d], u <= 2 * S * B
        steps_pairs = local.reshape(steps_pairs.shape)
        k = self.shape.heads
        c = 2.0 * self.zeta / k  # gradient scale of the anchor term, eq. 5 averaged over heads
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr
        self.optimizer.param_groups[0]["weight_decay"] = c
        w0_offset = self.anchors["w0"].mul(-c)
        small = [n for n in self.params if n != "w0"]
        small_params = [self.params[n].detach() for n in small]
        small_anchors = [self.anchors[n] for n in small]
        work = TrainWorkspace.allocate(self.params, self.shape, 2 * batch)
        small_grads = [work.grads[n] for n in small]
        drift = [work.drift[n] for n in small]
        for n, p in self.params.items():
            p.grad = work.grads[n]  # the optimiser reads the buffers train_step writes
        total = 0.0
        try:
            with torch.no_grad():
                for step in range(config.steps):
                    idx = steps_pairs[step]  # [B, 2] rows of x_train
                    rows = torch.from_numpy(np.concatenate([idx[:, 0], idx[:, 1]])).to(self.device)
                    x = x_train.index_select(0, rows)  # [2B, d]
                    total += train_step(self.params, x, self.shape, config.gamma, w0_offset, work)
                    # Exact c * (phi - phi~): a parameter the data leaves alone stays exactly put,
                    # where split terms would leave a rounding residue that Adam rescales to a step.
                    for out, p, a in zip(drift, small_params, small_anchors):  # a handful of tensors
                        torch.sub(p, a, out=out)
                    torch._foreach_add_(small_grads, drift, alpha=c)
                    self.optimizer.step()
                    if on_step is not None:
                        on_step(step)
        finally:
            for p in self.params.values():
                p.grad = None
        return total / config.steps

    def decay_zeta(self, decay: float) -> None:
        self.zeta *= decay

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {f"param.{n}": p.detach().cpu().contiguous() for n, p in self.params.items()}
        names = list(self.params)
        for p, name in zip(self.params.values(), names):
            s = self.optimizer.state.get(p)
            if s:
                state[f"adam.{name}.exp_avg"] = s["exp_avg"].cpu().contiguous()
                state[f"adam.{name}.exp_avg_sq"] = s["exp_avg_sq"].cpu().contiguous()
                state[f"adam.{name}.step"] = s["step"].reshape(1).float().cpu()
        state["zeta"] = torch.tensor([self.zeta], dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[f"param.{n}"])
        for n, p in self.params.items():
            if f"adam.{n}.exp_avg" in state:
                self.optimizer.state[p] = {
                    # Fused Adam keeps its step counter on the parameters' device.
                    "step": state[f"adam.{n}.step"].reshape(()).float().to(p.device),
                    "exp_avg": state[f"adam.{n}.exp_avg"].to(p.device).clone(),
                    "exp_avg_sq": state[f"adam.{n}.exp_avg_sq"].to(p.device).clone(),
                }
            else:
                self.optimizer.state.pop(p, None)
        self.zeta = float(state["zeta"].item())

    def save(self, path: Path) -> None:
        """Atomic safetensors write (tmp file + rename)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            save_file(self.state_dict(), str(tmp))
        except Exception as exc:  # safetensors reports I/O failures as its own error: give them their errno back
            found = re.search(r"os error (\d+)", str(exc))
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(tmp)) from exc
        tmp.replace(path)

    def load(self, path: Path) -> None:
        self.load_state_dict(load_file(str(path)))
