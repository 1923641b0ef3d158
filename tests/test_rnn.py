"""helpers.rnn: the hand-written RNN forward and BPTT against autograd and nn.RNN (float64)."""

import pytest
import torch
from torch.testing import assert_close

from helpers import rnn

T, B, D, H, O = 5, 3, 3, 4, 2


def _params(bias=True):
    g = torch.Generator().manual_seed(0)
    def p(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    return dict(W_hx=p(H, D), W_hh=p(H, H), b_h=p(H) if bias else None, W_yh=p(O, H),
                b_y=p(O) if bias else None)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_bptt_matches_autograd(activation, bias):
    params = _params(bias)
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(T, B, O, dtype=torch.float64), -1)
    h, o, cache = rnn.rnn_forward(x, h0, **params, activation=activation)
    extra = torch.randn(T, B, H, dtype=torch.float64)  # a loss term on h directly
    loss, grad_o = rnn.softmax_cross_entropy(o, y)
    (loss + (extra * h).sum()).backward()
    grads = rnn.rnn_bptt(cache, params["W_hx"], params["W_hh"], params["W_yh"], grad_o.detach(),
                         grad_h=extra)
    for name, p in params.items():
        if p is not None:
            assert_close(grads[name], p.grad)
    assert_close(grads["h0"], h0.grad)
    assert_close(grads["x"], x.grad)
    assert_close(grads["W_hh_per_step"].sum(0), params["W_hh"].grad)


def test_softmax_cross_entropy_gradient_is_yhat_minus_y():
    o = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1]), 3).double()
    loss, grad = rnn.softmax_cross_entropy(o, y)
    loss.backward()
    assert_close(grad, o.grad)
    assert_close(grad, torch.softmax(o, -1).detach() - y)


def test_hidden_jacobian_matches_autograd():
    params = _params()
    x = torch.randn(T, 1, D, dtype=torch.float64)
    h0 = torch.randn(1, H, dtype=torch.float64)
    _, _, cache = rnn.rnn_forward(x, h0, params["W_hx"], params["W_hh"], params["b_h"])
    i, t = 1, 4

    def h_t_from_h_i(h_i):
        h = h_i
        for k in range(i, t):
            h = torch.tanh(h @ params["W_hh"].T + x[k] @ params["W_hx"].T + params["b_h"])
        return h[0]

    ref = torch.autograd.functional.jacobian(h_t_from_h_i, cache.h[i].detach())[:, 0]
    assert_close(rnn.hidden_jacobian(cache, params["W_hh"].detach(), t, i)[0], ref)
    eye = torch.eye(H, dtype=torch.float64)
    assert_close(rnn.hidden_jacobian(cache, params["W_hh"], 2, 2)[0], eye)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_vanilla_rnn_matches_nn_rnn(activation):
    layer = rnn.VanillaRNN(D, H, O, activation=activation)
    with torch.no_grad():
        layer.b_h.normal_()
    ref = layer.torch_rnn_like()
    x, h0 = torch.randn(T, B, D), torch.randn(B, H)
    h, o = layer(x, h0)
    ref_h, ref_last = ref(x, h0.unsqueeze(0))
    assert_close(h, ref_h, atol=1e-6, rtol=1e-5)
    assert_close(h[-1], ref_last[0], atol=1e-6, rtol=1e-5)
    assert o.shape == (T, B, O)


def test_errors():
    with pytest.raises(ValueError, match="activation"):
        rnn.rnn_forward(torch.zeros(2, 1, 3), None, torch.zeros(4, 3), torch.zeros(4, 4),
                        activation="gelu")
    with pytest.raises(ValueError, match=r"\(T, B, D\)"):
        rnn.rnn_forward(torch.zeros(2, 3), None, torch.zeros(4, 3), torch.zeros(4, 4))
