"""Recurrent cells written by hand: forward pass and backpropagation through time (BPTT).

Conventions (shared by every cell in this module):

- time-major tensors: inputs ``x (T, B, D)``, hidden states ``(T, B, H)``, outputs ``(T, B, O)``;
- the maths uses column vectors, ``z_t = W_hh h_{t-1} + W_hx x_t + b_h``; with a batch of row
  vectors that is ``z = h_prev @ W_hh.T + x @ W_hx.T + b_h`` (weights stored as in
  ``nn.Linear``: ``W_hx (H, D)``, ``W_hh (H, H)``, ``W_yh (O, H)``);
- step ``t = 1..T`` of the maths is index ``t - 1`` of a ``(T, ...)`` tensor; ``cache.h`` keeps
  ``h_0`` too, so ``cache.h[t]`` is ``h_t``.

The hand-written gradients are checked against autograd and ``nn.RNN`` in ``tests/test_rnn.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# name -> (psi(z), psi'(z) written from h = psi(z) and z)
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "tanh": (torch.tanh, lambda h, z: 1 - h * h),
    "sigmoid": (torch.sigmoid, lambda h, z: h * (1 - h)),
    "relu": (torch.relu, lambda h, z: (z > 0).to(z.dtype)),
    "identity": (lambda z: z, lambda h, z: torch.ones_like(z)),
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass
class RNNCache:
    """What the backward pass needs: ``x (T, B, D)``, ``h (T+1, B, H)`` with ``h[0] = h_0``,
    pre-activations ``z (T, B, H)``, and the activation's name."""

    x: Tensor
    h: Tensor
    z: Tensor
    activation: str


def rnn_forward(x: Tensor, h0: Tensor | None, W_hx: Tensor, W_hh: Tensor,  # noqa: N803
                b_h: Tensor | None = None, W_yh: Tensor | None = None,  # noqa: N803
                b_y: Tensor | None = None, activation: str = "tanh",
                ) -> tuple[Tensor, Tensor | None, RNNCache]:
    """Vanilla (Elman) RNN: ``h_t = psi(W_hh h_{t-1} + W_hx x_t + b_h)``, ``o_t = W_yh h_t + b_y``.

    ``x (T, B, D)``, ``h0 (B, H)`` or None (zeros). Returns ``h (T, B, H)`` (h_1..h_T),
    ``o (T, B, O)`` (None without ``W_yh``) and the :class:`RNNCache`.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, D), got {tuple(x.shape)}")
    psi, _ = _activation(activation)
    steps, batch, _ = x.shape
    hidden = W_hh.shape[0]
    h_prev = x.new_zeros(batch, hidden) if h0 is None else h0
    hs, zs = [h_prev], []
    for t in range(steps):
        z = h_prev @ W_hh.T + x[t] @ W_hx.T  # (B, H)
        if b_h is not None:
            z = z + b_h
        h_prev = psi(z)
        zs.append(z)
        hs.append(h_prev)
    h_all = torch.stack(hs)  # (T+1, B, H)
    o = None
    if W_yh is not None:
        o = h_all[1:] @ W_yh.T  # (T, B, O)
        if b_y is not None:
            o = o + b_y
    return h_all[1:], o, RNNCache(x, h_all, torch.stack(zs), activation)


def rnn_bptt(cache: RNNCache, W_hx: Tensor, W_hh: Tensor, W_yh: Tensor | None = None,  # noqa: N803
             grad_o: Tensor | None = None, grad_h: Tensor | None = None) -> dict[str, Tensor]:
    """Backpropagation through time for :func:`rnn_forward`, given ``grad_o = dL/do (T, B, O)``
    and/or ``grad_h = dL/dh (T, B, H)`` (loss terms reading ``h_t`` directly).

    The recursion, with ``g_h_t = dL/dh_t`` (total, through every later step) and
    ``delta_t = g_h_t * psi'(z_t)``::

        g_h_T = W_yh^T g_o_T,   g_h_t = W_yh^T g_o_t + W_hh^T delta_{t+1},
        dL/dW_hh = sum_t delta_t h_{t-1}^T,   dL/dW_hx = sum_t delta_t x_t^T,
        dL/db_h = sum_t delta_t,   dL/dW_yh = sum_t g_o_t h_t^T,   dL/dh_0 = W_hh^T delta_1.

    Returns ``W_hx, W_hh, b_h, W_yh, b_y`` gradients (summed over the batch), ``h0 (B, H)``,
    ``x (T, B, D)``, ``g_h (T, B, H)``, ``delta (T, B, H)`` and ``W_hh_per_step (T, H, H)``
    (the term ``delta_t h_{t-1}^T`` of step t; they sum to the ``W_hh`` gradient).
    """
    _, dpsi = _activation(cache.activation)
    steps, batch, hidden = cache.z.shape
    if grad_o is None and grad_h is None:
        raise ValueError("give grad_o and/or grad_h")
    g_h_out = cache.z.new_zeros(steps, batch, hidden) if grad_h is None else grad_h.clone()
    if grad_o is not None:
        if W_yh is None:
            raise ValueError("grad_o needs W_yh")
        g_h_out = g_h_out + grad_o @ W_yh  # (T, B, H): W_yh^T g_o_t for every t
    g_h = torch.zeros_like(g_h_out)
    delta = torch.zeros_like(g_h_out)
    carry = cache.z.new_zeros(batch, hidden)  # W_hh^T delta_{t+1}
    for t in reversed(range(steps)):
        g_h[t] = g_h_out[t] + carry
        delta[t] = g_h[t] * dpsi(cache.h[t + 1], cache.z[t])
        carry = delta[t] @ W_hh  # row form of W_hh^T delta_t
    h_prev = cache.h[:-1]  # (T, B, H): h_0..h_{T-1}
    per_step = torch.einsum("tbi,tbj->tij", delta, h_prev)  # (T, H, H)
    grads = {
        "W_hh": per_step.sum(0),
        "W_hx": torch.einsum("tbi,tbj->ij", delta, cache.x),
        "b_h": delta.sum((0, 1)),
        "h0": carry,
        "x": delta @ W_hx,
        "g_h": g_h,
        "delta": delta,
        "W_hh_per_step": per_step,
    }
    if grad_o is not None:
        grads["W_yh"] = torch.einsum("tbo,tbh->oh", grad_o, cache.h[1:])
        grads["b_y"] = grad_o.sum((0, 1))
    return grads


def hidden_jacobian(cache: RNNCache, W_hh: Tensor, t: int, i: int) -> Tensor:  # noqa: N803
    """``dh_t/dh_i (B, H, H)`` for ``0 <= i <= t <= T`` (maths indexing): the product
    ``prod_{k=t..i+1} diag(psi'(z_k)) W_hh``; the identity when ``i == t``."""
    if not 0 <= i <= t <= cache.z.shape[0]:
        raise ValueError(f"need 0 <= i <= t <= T, got i={i}, t={t}")
    _, dpsi = _activation(cache.activation)
    batch, hidden = cache.z.shape[1:]
    jac = torch.eye(hidden, dtype=cache.z.dtype).expand(batch, hidden, hidden)
    for k in range(i + 1, t + 1):
        step = dpsi(cache.h[k], cache.z[k - 1]).unsqueeze(-1) * W_hh  # (B, H, H)
        jac = step @ jac  # dh_k/dh_{k-1} applied on the left
    return jac


def softmax_cross_entropy(o: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``J = -sum y log softmax(o)`` over the last axis, summed over the rest, and
    ``dJ/do = softmax(o) * sum(y) - y`` (``= y_hat - y`` for one-hot or probability ``y``)."""
    log_p = torch.log_softmax(o, dim=-1)
    loss = -(y * log_p).sum()
    return loss, log_p.exp() * y.sum(-1, keepdim=True) - y


class VanillaRNN(nn.Module):
    """An Elman RNN layer on :func:`rnn_forward`: ``(T, B, D) -> h (T, B, H)``, optional output
    projection ``o (T, B, O)``; ``torch_rnn_like`` gives the equivalent ``nn.RNN``."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int | None = None,
                 activation: str = "tanh", bias: bool = True):
        super().__init__()
        _activation(activation)
        self.activation = activation
        bound = hidden_size ** -0.5  # nn.RNN's initialisation
        self.W_hx = nn.Parameter(torch.empty(hidden_size, input_size).uniform_(-bound, bound))
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound))
        self.b_h = nn.Parameter(torch.zeros(hidden_size)) if bias else None
        self.out = nn.Linear(hidden_size, output_size, bias=bias) if output_size else None

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        h, _, _ = rnn_forward(x, h0, self.W_hx, self.W_hh, self.b_h, activation=self.activation)
        return h, (self.out(h) if self.out is not None else None)

    def torch_rnn_like(self) -> nn.RNN:
        """An ``nn.RNN`` (time-major) with the same weights (tanh or relu only)."""
        if self.activation not in ("tanh", "relu"):
            raise ValueError("nn.RNN supports tanh and relu only")
        ref = nn.RNN(self.W_hx.shape[1], self.W_hh.shape[0], nonlinearity=self.activation,
                     bias=self.b_h is not None)
        with torch.no_grad():
            ref.weight_ih_l0.copy_(self.W_hx)
            ref.weight_hh_l0.copy_(self.W_hh)
            if self.b_h is not None:
                ref.bias_ih_l0.copy_(self.b_h)
                ref.bias_hh_l0.zero_()
        return ref.to(self.W_hh.dtype)
