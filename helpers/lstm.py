"""An LSTM written out: one cell's forward, its hand-derived backward, and BPTT over a sequence.

Gates are stacked in PyTorch's order **i, f, g, o** so that the weights of an ``nn.LSTM`` can be
used directly (``from_torch_lstm``)::

    a = W_x x_t + W_h h_{t-1} + b              # (B, 4H) pre-activations
    i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

The backward pass is the chain rule of those lines, written by hand (no autograd); the tests
compare it with autograd and with ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

GATES: tuple[str, ...] = ("i", "f", "g", "o")


@dataclass
class LSTMParams:
    """Stacked weights: ``W_x (4H, D)``, ``W_h (4H, H)``, ``b (4H,)``, gate order i, f, g, o."""

    W_x: Tensor  # noqa: N815 - the maths' names
    W_h: Tensor  # noqa: N815
    b: Tensor

    @property
    def hidden_size(self) -> int:
        return self.W_h.shape[1]


@dataclass
class CellCache:
    """What the backward of one step needs from its forward."""

    x: Tensor
    h_prev: Tensor
    c_prev: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor
    c: Tensor
    tanh_c: Tensor


def random_params(input_size: int, hidden_size: int, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float64) -> LSTMParams:
    """Random parameters with entries ~ U(-1/√H, 1/√H) (PyTorch's LSTM init)."""
    bound = hidden_size ** -0.5

    def uniform(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    return LSTMParams(uniform(4 * hidden_size, input_size),
                      uniform(4 * hidden_size, hidden_size), uniform(4 * hidden_size))


def from_torch_lstm(lstm: nn.LSTM) -> LSTMParams:
    """The (detached) parameters of a one-layer ``nn.LSTM``; its two biases are summed."""
    if lstm.num_layers != 1 or lstm.bidirectional:
        raise ValueError("only a one-layer, unidirectional nn.LSTM maps onto one cell")
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0 if lstm.bias else torch.zeros(4 * lstm.hidden_size)
    return LSTMParams(lstm.weight_ih_l0.detach().clone(), lstm.weight_hh_l0.detach().clone(),
                      b.detach().clone())


def cell_forward(x: Tensor, h_prev: Tensor, c_prev: Tensor,
                 p: LSTMParams) -> tuple[Tensor, Tensor, CellCache]:
    """One step: ``x (B, D)``, ``h_prev``/``c_prev (B, H)`` -> ``h, c (B, H)`` and a cache."""
    a = x @ p.W_x.T + h_prev @ p.W_h.T + p.b  # (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
    i, f, g, o = a_i.sigmoid(), a_f.sigmoid(), a_g.tanh(), a_o.sigmoid()
    c = f * c_prev + i * g
    tanh_c = c.tanh()
    h = o * tanh_c
    return h, c, CellCache(x, h_prev, c_prev, i, f, g, o, c, tanh_c)


def cell_backward(dh: Tensor, dc_next: Tensor, cache: CellCache,
                  p: LSTMParams) -> dict[str, Tensor]:
    """Hand-derived gradients of one step.

    ``dh (B, H)`` = ∂E/∂h_t (from the output and from step t+1), ``dc_next (B, H)`` = the part
    of ∂E/∂c_t that arrives through c_{t+1} (zeros at the last step). Returns ``x (B, D)``,
    ``h_prev``, ``c_prev (B, H)``, ``W_x (4H, D)``, ``W_h (4H, H)``, ``b (4H,)`` and the
    pre-activation gradient ``a (B, 4H)``.
    """
    k = cache
    do = dh * k.tanh_c                                   # ∂E/∂o
    dc = dc_next + dh * k.o * (1 - k.tanh_c ** 2)        # total ∂E/∂c_t
    df, di, dg = dc * k.c_prev, dc * k.g, dc * k.i       # through c = f c_prev + i g
    dc_prev = dc * k.f
    da = torch.cat([di * k.i * (1 - k.i),                # σ' = σ(1 − σ)
                    df * k.f * (1 - k.f),
                    dg * (1 - k.g ** 2),                 # tanh' = 1 − tanh²
                    do * k.o * (1 - k.o)], dim=-1)       # (B, 4H)
    return {"x": da @ p.W_x, "h_prev": da @ p.W_h, "c_prev": dc_prev,
            "W_x": da.T @ k.x, "W_h": da.T @ k.h_prev, "b": da.sum(0), "a": da}


def parameter_gradients(e_delta: Tensor, cache: CellCache) -> dict[str, Tensor]:
    """The twelve parameter gradients of one cell in closed form, each written out from
    ``e_delta (B, H)`` = E_δ = ∂E/∂h_t and the forward values (no gradient from a later step).

    The answer to sharif-1402-hw3 T1(b) term by term, under :func:`named_gradients`' names:
    ``W_x* (H, D)``, ``W_h* (H, H)``, ``b_* (H,)`` for * in i, f, g, o, summed over the batch.
    :func:`cell_backward` is the same chain rule with the gates stacked.
    """
    k = cache
    tanh_prime_c = 1 - k.tanh_c ** 2
    error = {  # ∂E/∂a_* for each gate's pre-activation, (B, H)
        "i": e_delta * k.o * tanh_prime_c * k.g * k.i * (1 - k.i),
        "f": e_delta * k.o * tanh_prime_c * k.c_prev * k.f * (1 - k.f),
        "g": e_delta * k.o * tanh_prime_c * k.i * (1 - k.g ** 2),
        "o": e_delta * k.tanh_c * k.o * (1 - k.o),
    }
    out: dict[str, Tensor] = {}
    for key, inputs in (("W_x", k.x), ("W_h", k.h_prev)):
        out.update({f"{key}{gate}": delta.T @ inputs for gate, delta in error.items()})
    out.update({f"b_{gate}": delta.sum(0) for gate, delta in error.items()})
    return out


def forward(xs: Tensor, h0: Tensor, c0: Tensor,
            p: LSTMParams) -> tuple[Tensor, Tensor, list[CellCache]]:
    """Unroll over ``xs (T, B, D)`` from ``h0, c0 (B, H)``: ``hs (T, B, H)``, ``c_T``, caches."""
    h, c, hs, caches = h0, c0, [], []
    for x in xs:
        h, c, cache = cell_forward(x, h, c, p)
        hs.append(h)
        caches.append(cache)
    return torch.stack(hs), c, caches


def bptt(dhs: Tensor, caches: list[CellCache], p: LSTMParams,
         dc_last: Tensor | None = None) -> dict[str, Tensor]:
    """Backpropagation through time.

    ``dhs (T, B, H)``: ∂E/∂h_t coming from each step's output (the loss's direct term);
    ``dc_last (B, H)``: ∂E/∂c_T from outside (zeros if None). Walks t = T … 1 carrying
    ∂E/∂h_{t-1} and ∂E/∂c_{t-1} backwards and summing the weight gradients of every step.
    Returns ``W_x``, ``W_h``, ``b``, ``xs (T, B, D)``, ``h0``, ``c0`` and the total
    ∂E/∂h_t and ∂E/∂c_t of every step, ``hs`` and ``cs (T, B, H)``.
    """
    dW_x, dW_h, db = torch.zeros_like(p.W_x), torch.zeros_like(p.W_h), torch.zeros_like(p.b)  # noqa: N806
    dh_carry = torch.zeros_like(dhs[0])
    dc_carry = torch.zeros_like(dhs[0]) if dc_last is None else dc_last
    dxs, dh_total, dc_total = [], [], []
    for t in reversed(range(len(caches))):
        dh = dhs[t] + dh_carry
        grads = cell_backward(dh, dc_carry, caches[t], p)
        dh_total.append(dh)
        k = caches[t]
        dc_total.append(dc_carry + dh * k.o * (1 - k.tanh_c ** 2))
        dW_x += grads["W_x"]  # noqa: N806
        dW_h += grads["W_h"]  # noqa: N806
        db += grads["b"]
        dh_carry, dc_carry = grads["h_prev"], grads["c_prev"]
        dxs.append(grads["x"])
    return {"W_x": dW_x, "W_h": dW_h, "b": db, "xs": torch.stack(dxs[::-1]),
            "h0": dh_carry, "c0": dc_carry, "hs": torch.stack(dh_total[::-1]),
            "cs": torch.stack(dc_total[::-1])}


class LSTMCellFunction(torch.autograd.Function):
    """One cell as an autograd Function whose backward is :func:`cell_backward` (so that
    ``torch.autograd.gradcheck`` can test the hand-derived gradients against finite
    differences). Inputs: ``x, h_prev, c_prev, W_x, W_h, b``; outputs ``h, c``."""

    @staticmethod
    def forward(ctx, x, h_prev, c_prev, W_x, W_h, b):  # noqa: N803
        p = LSTMParams(W_x, W_h, b)
        h, c, cache = cell_forward(x, h_prev, c_prev, p)
        ctx.cache, ctx.p = cache, p
        return h, c

    @staticmethod
    def backward(ctx, dh, dc):
        g = cell_backward(dh, dc, ctx.cache, ctx.p)
        return g["x"], g["h_prev"], g["c_prev"], g["W_x"], g["W_h"], g["b"]


def named_gradients(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-gate names of the stacked weight gradients: ``W_xi … W_ho, b_i … b_o``."""
    out: dict[str, Tensor] = {}
    for key in ("W_x", "W_h", "b"):
        for gate, block in zip(GATES, grads[key].chunk(4, dim=0), strict=True):
            out[f"{key}{gate}" if key != "b" else f"b_{gate}"] = block
    return out
