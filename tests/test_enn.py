"""The batched ENN against the per-head reference of eq. 5, and the replay buffer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.model.enn import (
    ENNShape,
    EnsembleRewardModel,
    ReplayBuffer,
    TrainConfig,
    TrainWorkspace,
    bradley_terry_loss,
    forward_heads,
    init_params,
    train_step,
)

sys.path.insert(0, str(Path(__file__).parent))
from references.enn_reference import build_heads, reference_loss, reference_rewards, snapshot  # noqa: E402


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_forward_matches_per_head_reference(layers: int) -> None:
    shape = ENNShape(dim=12, heads=4, hidden=8, layers=layers)
    model = EnsembleRewardModel(shape, seed=3)
    heads = build_heads(shape, seed=3)
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.rewards(x), reference_rewards(heads, x), rtol=1e-5, atol=1e-6)


def _train_both(shape: ENNShape, zeta: float, gamma: float, steps: int, lr: float):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(30, shape.dim, generator=g)
    buf = ReplayBuffer(2)
    buf.append(np.arange(0, 10), np.arange(10, 20))
    model = EnsembleRewardModel(shape, seed=5, zeta=zeta)
    model.fit(feats, buf, TrainConfig(lr=lr, steps=steps, batch_size=10, gamma=gamma), 10, np.random.default_rng(0))

    heads = build_heads(shape, seed=5)
    anchors = snapshot(heads)
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    # The fast fit permutes D_train; with batch = |D_train| every step sees all 10 pairs.
    xc, xr = feats[0:10], feats[10:20]
    for _ in range(steps):
        opt.zero_grad()
        reference_loss(heads, anchors, xc, xr, gamma, zeta).backward()
        opt.step()
    return model, heads, feats


@pytest.mark.parametrize("zeta", [0.0, 1.0, 5.0])
def test_training_matches_autograd_of_eq5_with_anchor(zeta: float) -> None:
    """Several Adam steps of the fused-gradient trainer equal Adam on eq. 5 via autograd,
    so the analytic anchor gradient and the centering term are right."""
    shape = ENNShape(dim=9, heads=3, hidden=5, layers=2)
    model, heads, feats = _train_both(shape, zeta=zeta, gamma=0.01, steps=5, lr=1e-2)
    torch.testing.assert_close(model.rewards(feats), reference_rewards(heads, feats), rtol=1e-4, atol=1e-5)


def test_anchor_pulls_towards_initialisation() -> None:
    shape = ENNShape(dim=9, heads=3, hidden=5, layers=2)
    weak, _, _ = _train_both(shape, zeta=0.0, gamma=0.01, steps=20, lr=5e-2)
    strong, _, _ = _train_both(shape, zeta=50.0, gamma=0.01, steps=20, lr=5e-2)

    def drift(m: EnsembleRewardModel) -> float:
        return sum(float((m.params[n].detach() - m.anchors[n]).pow(2).sum()) for n in m.params)

    assert drift(strong) < 0.5 * drift(weak)


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 3),
    heads=st.integers(2, 5),
    hidden=st.integers(1, 7),
    dim=st.integers(1, 9),
    batch=st.integers(1, 6),
    gamma=st.sampled_from([0.0, 0.01, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_train_step_gradients_equal_autograd(layers, heads, hidden, dim, batch, gamma, seed) -> None:
    """The hand-written backward of ``train_step`` against autograd of ``bradley_terry_loss``
    through ``forward_heads`` (float64, random shapes, weights and rows): same loss, same
    gradient for every parameter, the first layer's offset added to its weight gradient."""
    shape = ENNShape(dim=dim, heads=heads, hidden=hidden, layers=layers)
    g = torch.Generator().manual_seed(seed)
    params = {n: (p + 0.1 * torch.randn(p.shape, generator=g)).double() for n, p in init_params(shape, seed).items()}
    x = torch.randn(2 * batch, dim, generator=g, dtype=torch.float64)
    offset = torch.randn(dim, heads * hidden, generator=g, dtype=torch.float64)

    work = TrainWorkspace.allocate(params, shape, 2 * batch)
    loss = train_step(params, x, shape, gamma, offset, work)

    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    r = forward_heads(leaves, x, shape)  # [K, 2B]
    expected = bradley_terry_loss(r[:, :batch], r[:, batch:], gamma)
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12, abs=1e-12)
    for n, leaf in leaves.items():
        want = leaf.grad + (offset if n == "w0" else 0)
        torch.testing.assert_close(work.grads[n], want, rtol=1e-10, atol=1e-12, msg=n)


def test_train_step_hand_checked_single_unit() -> None:
    """K = 2 heads of one unit, d = 1, one pair (x+ = 1, x- = 0), every weight 1, biases 0:
    r+ = relu(1) * 1 = 1 and r- = 0 in both heads, so loss = -log s(1) + gamma * (1 + 0)^2,
    d loss / d r+ = (-s(-1) + 2 gamma) / K and d loss / d r- = (s(-1) + 2 gamma) / K, with
    s(-1) = 0.2689414."""
    shape = ENNShape(dim=1, heads=2, hidden=1, layers=1)
    params = {
        "w0": torch.ones(1, 2, dtype=torch.float64),
        "b0": torch.zeros(2, dtype=torch.float64),
        "w_out": torch.ones(2, 1, dtype=torch.float64),
        "b_out": torch.zeros(2, dtype=torch.float64),
    }
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    work = TrainWorkspace.allocate(params, shape, 2)
    gamma, s = 0.01, 0.2689414213699951
    loss = train_step(params, x, shape, gamma, torch.zeros(1, 2, dtype=torch.float64), work)
    assert loss == pytest.approx(0.3132616875182228 + gamma)
    d_chosen, d_rejected = (-s + 2 * gamma) / 2, (s + 2 * gamma) / 2
    # r = w_out * relu(w0 x + b0) + b_out; the hidden unit is 1 for x+ and 0 for x-.
    assert work.grads["w_out"].flatten().tolist() == pytest.approx([d_chosen] * 2)
    assert work.grads["b_out"].tolist() == pytest.approx([d_chosen + d_rejected] * 2)
    # relu'(0) = 0 (PyTorch's convention), so x- sends nothing back through the hidden unit.
    assert work.grads["w0"].flatten().tolist() == pytest.approx([d_chosen] * 2)
    assert work.grads["b0"].tolist() == pytest.approx([d_chosen] * 2)


def test_bradley_terry_loss_value() -> None:
    # One head, one pair: r+ = 1, r- = 0 -> -log s(1) + gamma * 1 = 0.3132617 + 0.01.
    loss = bradley_terry_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), gamma=0.01)
    assert float(loss) == pytest.approx(0.31326169 + 0.01, rel=1e-6)


def test_training_reduces_loss_and_learns_a_linear_reward() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g)
    true = feats @ torch.randn(16, generator=g)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 200, 400), rng.integers(0, 200, 400)
    keep = a != b
    a, b = a[keep], b[keep]
    win = (true[a] > true[b]).numpy()
    buf = ReplayBuffer()
    buf.append(np.where(win, a, b), np.where(win, b, a))
    model = EnsembleRewardModel(ENNShape(16, heads=4, hidden=16), seed=0, zeta=1e-3)
    first = model.fit(feats, buf, TrainConfig(lr=1e-2, steps=50), 1000, rng)
    last = model.fit(feats, buf, TrainConfig(lr=1e-2, steps=50), 1000, rng)
    assert last < first
    mean, std = model.predict(feats)
    t = true.numpy()
    agree = np.mean((mean[:, None] > mean[None, :]) == (t[:, None] > t[None, :]))
    assert agree > 0.85
    assert np.all(std >= 0)


def test_seeded_training_is_deterministic_and_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    shape = ENNShape(dim=10, heads=3, hidden=6)
    feats = torch.randn(40, 10, generator=torch.Generator().manual_seed(2))
    buf = ReplayBuffer()
    buf.append(np.arange(20), np.arange(20, 40))
    cfg = TrainConfig(lr=1e-2, steps=7, batch_size=8)

    straight = EnsembleRewardModel(shape, seed=1)
    straight.fit(feats, buf, cfg, 100, np.random.default_rng(10))
    straight.decay_zeta(0.9)
    straight.fit(feats, buf, cfg, 100, np.random.default_rng(11))

    first = EnsembleRewardModel(shape, seed=1)
    first.fit(feats, buf, cfg, 100, np.random.default_rng(10))
    first.decay_zeta(0.9)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = EnsembleRewardModel(shape, seed=1)
    resumed.load(tmp_path / "ckpt.safetensors")
    assert resumed.zeta == pytest.approx(0.9)
    resumed.fit(feats, buf, cfg, 100, np.random.default_rng(11))
    assert torch.equal(straight.rewards(feats), resumed.rewards(feats))


def test_forward_has_no_python_loop_over_heads() -> None:
    """Doubling K must not change the number of autograd nodes (one program for all heads)."""

    def count_nodes(k: int) -> int:
        shape = ENNShape(dim=6, heads=k, hidden=4)
        model = EnsembleRewardModel(shape, seed=0)
        out = forward_heads(model.params, torch.randn(3, 6), shape)
        seen, stack = set(), [out.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
        return len(seen)

    assert count_nodes(4) == count_nodes(40)


def test_replay_buffer_appends_and_grows() -> None:
    buf = ReplayBuffer(capacity=2)
    for i in range(10):
        buf.append(np.array([i, i + 100]), np.array([i + 1, i + 101]))
    assert len(buf) == 20
    pairs = buf.pairs()
    assert pairs[0].tolist() == [0, 1] and pairs[-1].tolist() == [109, 110]
    # Growth is geometric: capacity stays within 2x of the size.
    assert len(buf._pairs) <= 2 * len(buf) + 2


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_a_device_matches_autograd_on_the_cpu(device: str) -> None:
    """The same seed gives the same heads on every device, and training there follows eq. 5."""
    shape = ENNShape(dim=9, heads=3, hidden=5, layers=2)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(30, shape.dim, generator=g)
    buf = ReplayBuffer(2)
    buf.append(np.arange(0, 10), np.arange(10, 20))
    model = EnsembleRewardModel(shape, seed=5, zeta=1.0, device=device)
    model.fit(feats.to(device), buf, TrainConfig(lr=1e-2, steps=5, batch_size=10, gamma=0.01), 10, np.random.default_rng(0))
    heads = build_heads(shape, seed=5)
    anchors = snapshot(heads)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        reference_loss(heads, anchors, feats[0:10], feats[10:20], 0.01, 1.0).backward()
        opt.step()
    torch.testing.assert_close(model.rewards(feats), reference_rewards(heads, feats), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_moves_between_devices(tmp_path: Path, device: str) -> None:
    shape = ENNShape(dim=10, heads=3, hidden=6)
    feats = torch.randn(40, 10, generator=torch.Generator().manual_seed(2))
    buf = ReplayBuffer()
    buf.append(np.arange(20), np.arange(20, 40))
    cfg = TrainConfig(lr=1e-2, steps=4, batch_size=8)
    trained = EnsembleRewardModel(shape, seed=1, device=device)
    trained.fit(feats.to(device), buf, cfg, 100, np.random.default_rng(3))
    trained.save(tmp_path / "ckpt.safetensors")
    on_cpu = EnsembleRewardModel(shape, seed=1, device="cpu")
    on_cpu.load(tmp_path / "ckpt.safetensors")
    torch.testing.assert_close(on_cpu.rewards(feats), trained.rewards(feats), rtol=1e-5, atol=1e-6)
    on_cpu.fit(feats, buf, cfg, 100, np.random.default_rng(4))  # Adam state came along


def _full_state(model: EnsembleRewardModel) -> dict[str, torch.Tensor]:
    """Everything a checkpoint holds (parameters, Adam moments and step counts, zeta) plus
    the anchors, which a checkpoint does not hold but a fresh model must rebuild."""
    state = model.state_dict()
    state.update({f"anchor.{n}": t for n, t in model.anchors.items()})
    return state


def test_save_then_load_restores_the_in_memory_state_bit_for_bit(tmp_path: Path) -> None:
    """Issue 11: a process that trains on and one that reloads each checkpoint must hold the
    same model after every iteration: parameters, Adam moments, Adam step counts (dtype and
    device included), zeta and anchors, compared bit for bit; and the next fit of both
    must also agree bit for bit."""
    shape = ENNShape(dim=10, heads=4, hidden=8, layers=2)
    feats = torch.randn(80, 10, generator=torch.Generator().manual_seed(3))
    buf = ReplayBuffer()
    cfg = TrainConfig(lr=3e-3, steps=9, batch_size=8)
    straight = EnsembleRewardModel(shape, seed=4, zeta=1.5)
    path = tmp_path / "ckpt.safetensors"
    for it in range(4):
        buf.append(np.arange(it * 10, it * 10 + 10), np.arange(40 + it * 10, 50 + it * 10))  # 10 more pairs each iteration
        straight.fit(feats, buf, cfg, 25, np.random.default_rng([7, it]))
        straight.decay_zeta(0.97)
        straight.save(path)
        reloaded = EnsembleRewardModel(shape, seed=4, zeta=1.5)
        reloaded.load(path)
        a, b = _full_state(straight), _full_state(reloaded)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
        assert reloaded.zeta == straight.zeta
        for p_a, p_b in zip(straight.params.values(), reloaded.params.values()):
            s_a, s_b = straight.optimizer.state[p_a], reloaded.optimizer.state[p_b]
            assert s_a["step"].dtype == s_b["step"].dtype and s_a["step"].device == s_b["step"].device
        # One more fit from each: identical parameters and moments.
        probe_buf = ReplayBuffer()
        probe_buf.append(buf.pairs()[:, 0].copy(), buf.pairs()[:, 1].copy())
        twin = EnsembleRewardModel(shape, seed=4, zeta=1.5)
        twin.load(path)
        twin.fit(feats, probe_buf, cfg, 25, np.random.default_rng(99))
        reloaded.fit(feats, probe_buf, cfg, 25, np.random.default_rng(99))
        assert all(torch.equal(x, y) for x, y in zip(_full_state(twin).values(), _full_state(reloaded).values()))


def test_the_buffer_order_decides_the_trained_model() -> None:
    """Why the buffer's order is state: the same pairs in another order give other minibatches
    and another ensemble once the buffer outgrows the minibatch."""
    shape = ENNShape(dim=6, heads=3, hidden=8)
    feats = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    chosen, rejected = np.arange(30), np.arange(30, 60)
    perm = np.random.default_rng(1).permutation(30)
    models = []
    for order in (np.arange(30), perm):
        buf = ReplayBuffer()
        buf.append(chosen[order], rejected[order])
        m = EnsembleRewardModel(shape, seed=2)
        m.fit(feats, buf, TrainConfig(lr=1e-2, steps=6, batch_size=8), 30, np.random.default_rng(5))
        models.append(m.rewards(feats))
    assert not torch.equal(models[0], models[1])


@pytest.mark.parametrize("initially", [False, True])
def test_fit_restores_the_callers_flush_denormal_mode(initially: bool) -> None:
    """fit flushes subnormals while it trains and must leave the mode as it found it, so
    predictions after training and after a fresh start use the same arithmetic."""
    from activepref.model.numerics import flush_denormal_enabled

    shape = ENNShape(dim=4, heads=2, hidden=4)
    buf = ReplayBuffer()
    buf.append(np.arange(3), np.arange(3, 6))
    torch.set_flush_denormal(initially)
    try:
        assert flush_denormal_enabled() is initially
        EnsembleRewardModel(shape, seed=0).fit(torch.randn(6, 4), buf, TrainConfig(steps=2), 3, np.random.default_rng(0))
        assert flush_denormal_enabled() is initially
    finally:
        torch.set_flush_denormal(False)
