"""The hand-written LSTM: forward equals nn.LSTM, hand-derived backward equals autograd and
finite differences (float64)."""

import torch
from torch import nn
from torch.testing import assert_close

from helpers import lstm


def _params_with_grad(p: lstm.LSTMParams) -> lstm.LSTMParams:
    return lstm.LSTMParams(*(t.clone().requires_grad_(True) for t in (p.W_x, p.W_h, p.b)))


def test_forward_equals_torch_lstm():
    ref = nn.LSTM(5, 7).double()
    p = lstm.from_torch_lstm(ref)
    xs = torch.randn(6, 3, 5, dtype=torch.float64)
    h0, c0 = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    hs, c_last, _ = lstm.forward(xs, h0, c0, p)
    out, (h_n, c_n) = ref(xs, (h0[None], c0[None]))
    assert_close(hs, out.detach(), atol=1e-12, rtol=1e-12)
    assert_close(c_last, c_n[0].detach(), atol=1e-12, rtol=1e-12)


def test_cell_backward_equals_autograd():
    g = torch.Generator().manual_seed(1)
    p = lstm.random_params(4, 6, g)
    x, h, c = (torch.randn(2, n, generator=g, dtype=torch.float64) for n in (4, 6, 6))
    dh, dc = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, h, c, p.W_x, p.W_h, p.b)]
    h1, c1, _ = lstm.cell_forward(*leaves[:3], lstm.LSTMParams(*leaves[3:]))
    auto = torch.autograd.grad((h1 * dh).sum() + (c1 * dc).sum(), leaves)
    _, _, cache = lstm.cell_forward(x, h, c, p)
    hand = lstm.cell_backward(dh, dc, cache, p)
    for name, a in zip(("x", "h_prev", "c_prev", "W_x", "W_h", "b"), auto, strict=True):
        assert_close(hand[name], a, atol=1e-12, rtol=1e-10)


def test_gradcheck_of_hand_backward():
    g = torch.Generator().manual_seed(2)
    p = lstm.random_params(3, 4, g)
    inputs = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in (3, 4, 4)]
    inputs += [p.W_x, p.W_h, p.b]
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(lstm.LSTMCellFunction.apply, inputs, eps=1e-6, atol=1e-7)


def test_bptt_equals_autograd_over_a_sequence():
    g = torch.Generator().manual_seed(3)
    p = lstm.random_params(3, 5, g)
    T, B = 7, 2
    xs = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    h0, c0 = torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    target = torch.randn(T, B, 5, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (xs, h0, c0, p.W_x, p.W_h, p.b)]
    hs, _, _ = lstm.forward(*leaves[:3], lstm.LSTMParams(*leaves[3:]))
    loss = 0.5 * ((hs - target) ** 2).sum()
    auto = torch.autograd.grad(loss, leaves)
    hs, _, caches = lstm.forward(xs, h0, c0, p)
    hand = lstm.bptt(hs - target, caches, p)
    for name, a in zip(("xs", "h0", "c0", "W_x", "W_h", "b"), auto, strict=True):
        assert_close(hand[name], a, atol=1e-11, rtol=1e-9)
    assert hand["hs"].shape == hand["cs"].shape == (T, B, 5)
    assert_close(hand["hs"][-1], hs[-1] - target[-1])  # last step: only the direct term


def test_parameter_gradients_equal_autograd_for_every_parameter():
    g = torch.Generator().manual_seed(5)
    p = lstm.random_params(4, 6, g)
    x, h, c = (torch.randn(3, n, generator=g, dtype=torch.float64) for n in (4, 6, 6))
    e_delta = torch.randn(3, 6, generator=g, dtype=torch.float64)
    leaves = _params_with_grad(p)
    h1, _, _ = lstm.cell_forward(x, h, c, leaves)
    auto = torch.autograd.grad((h1 * e_delta).sum(), [leaves.W_x, leaves.W_h, leaves.b])
    auto_named = lstm.named_gradients(dict(zip(("W_x", "W_h", "b"), auto, strict=True)))
    _, _, cache = lstm.cell_forward(x, h, c, p)
    closed = lstm.parameter_gradients(e_delta, cache)
    assert set(closed) == set(auto_named) and len(closed) == 12
    for name, grad in closed.items():
        assert_close(grad, auto_named[name], atol=1e-12, rtol=1e-10)


def test_a_wrong_backward_is_caught():
    """The comparison can fail: dropping only the tanh'(c_t) factor of ∂E/∂c_t changes the
    input, forget and candidate gradients and leaves the output gate's alone."""
    g = torch.Generator().manual_seed(4)
    p = lstm.random_params(3, 4, g)
    x, h, c = (torch.randn(2, n, generator=g, dtype=torch.float64) for n in (3, 4, 4))
    _, _, cache = lstm.cell_forward(x, h, c, p)
    e_delta = torch.ones(2, 4, dtype=torch.float64)
    good = lstm.named_gradients(lstm.cell_backward(e_delta, torch.zeros_like(e_delta), cache, p))
    # δc = E_δ o (1 - tanh²c) + E_δ o tanh²c = E_δ o: the derivation without tanh'(c_t)
    missing_tanh_prime = e_delta * cache.o * cache.tanh_c ** 2
    bad = lstm.named_gradients(lstm.cell_backward(e_delta, missing_tanh_prime, cache, p))
    for name in good:
        if name.endswith("o"):
            assert torch.equal(good[name], bad[name])
        else:
            assert (good[name] - bad[name]).abs().max() > 1e-3


def test_named_gradients_split_per_gate():
    p = lstm.random_params(3, 4)
    names = lstm.named_gradients({"W_x": p.W_x, "W_h": p.W_h, "b": p.b})
    assert set(names) == {f"W_x{g}" for g in "ifgo"} | {f"W_h{g}" for g in "ifgo"} | {
        f"b_{g}" for g in "ifgo"}
    assert names["W_xf"].shape == (4, 3) and names["b_o"].shape == (4,)
