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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from helpers.metrics import classification_metrics
from helpers.training import EarlyStopping, History, fit

if TYPE_CHECKING:
    from helpers.vocab import EncodedReviews

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


# --------------------------------------------------------------------------------------------
# Many-to-one sequence classification (iust-1402-hw5 Question 4).
# Batch-first here: ids (B, L) right-padded with 0, lengths (B,).
# --------------------------------------------------------------------------------------------

class _BPTTFunction(torch.autograd.Function):
    """``h (T, B, H) = rnn_forward(x, ...)`` whose backward is the hand-written :func:`rnn_bptt`
    (autograd never sees the recurrence)."""

    @staticmethod
    def forward(ctx, x, W_hx, W_hh, b_h, activation):  # noqa: N803
        h, _, cache = rnn_forward(x, None, W_hx, W_hh, b_h, activation=activation)
        ctx.save_for_backward(cache.x, cache.h, cache.z, W_hx, W_hh)
        ctx.activation = activation
        ctx.has_bias = b_h is not None
        return h

    @staticmethod
    def backward(ctx, grad_h):
        x, h_all, z, W_hx, W_hh = ctx.saved_tensors  # noqa: N806
        grads = rnn_bptt(RNNCache(x, h_all, z, ctx.activation), W_hx, W_hh,
                         grad_h=grad_h.contiguous())
        return grads["x"], grads["W_hx"], grads["W_hh"], (grads["b_h"] if ctx.has_bias
                                                          else None), None


class BPTTRNN(VanillaRNN):
    """:class:`VanillaRNN` trained with its own BPTT: ``forward(x (T, B, D)) -> h (T, B, H)``
    (h_0 = 0), gradients from :func:`rnn_bptt` rather than autograd."""

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh"):
        super().__init__(input_size, hidden_size, None, activation)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, None]:
        if h0 is not None:
            raise ValueError("BPTTRNN starts from h_0 = 0")
        return _BPTTFunction.apply(x, self.W_hx, self.W_hh, self.b_h, self.activation), None


CELLS = ("scratch", "rnn", "gru", "lstm")
POOLINGS = ("last", "mean", "attention", "hard", "hard_st")


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """``(B, width)`` boolean, True on the first ``lengths[b]`` positions."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class RecurrentClassifier(nn.Module):
    """Embedding -> recurrent layer -> pooling over time -> linear: ``forward(ids (B, L),
    lengths (B,)) -> logits (B, num_classes)``.

    ``cell``: ``"scratch"`` (:class:`BPTTRNN`, unidirectional), ``"rnn"``, ``"gru"``, ``"lstm"``
    (PyTorch, packed so that padding never enters a state). ``pooling`` of the states
    ``s_t (B, L, H*dirs)``: ``"last"`` (the final state of each direction), ``"mean"`` (over the
    real tokens), ``"attention"`` (``a = softmax_t(w^T tanh(W s_t))``, sum of ``a_t s_t``),
    ``"hard"`` (one-hot argmax of the same scores: no gradient reaches ``W, w``) and
    ``"hard_st"`` (argmax forward, softmax gradient backward: straight-through).
    ``dropout`` zeroes embedding features and pooled features with that probability while
    training (0: no dropout layer is applied). The last pooling weights ``(B, L)`` are kept in
    ``self.last_weights``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, cell: str = "lstm",
                 bidirectional: bool = False, pooling: str = "last", num_classes: int = 2,
                 attn_dim: int = 32, pad_id: int = 0, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; known: {CELLS}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; known: {POOLINGS}")
        if cell == "scratch" and bidirectional:
            raise ValueError("the scratch RNN is unidirectional")
        self.cell, self.pooling, self.bidirectional = cell, pooling, bidirectional
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        if cell == "scratch":
            self.rnn: nn.Module = BPTTRNN(embed_dim, hidden_size)
        else:
            kind = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
            self.rnn = kind(embed_dim, hidden_size, batch_first=True, bidirectional=bidirectional)
        out_dim = hidden_size * (2 if bidirectional else 1)
        if pooling in ("attention", "hard", "hard_st"):
            self.attn_proj = nn.Linear(out_dim, attn_dim)
            self.attn_score = nn.Linear(attn_dim, 1, bias=False)
        self.head = nn.Linear(out_dim, num_classes)
        self.last_weights: Tensor | None = None

    def states(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(states (B, L, H*dirs), last (B, H*dirs))``; states at padding are zero for
        PyTorch cells, arbitrary for the scratch cell (pooling masks them)."""
        x = self.dropout(self.embedding(ids))  # (B, L, E)
        if self.cell == "scratch":
            h, _ = self.rnn(x.transpose(0, 1))
            states = h.transpose(0, 1)  # (B, L, H)
            last = states[torch.arange(len(ids), device=ids.device), lengths - 1]
            return states, last
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, h_n = self.rnn(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                     total_length=ids.shape[1])
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        last = torch.cat(list(h_n), dim=-1)  # (dirs, B, H) -> (B, dirs*H)
        return states, last

    def pool(self, states: Tensor, last: Tensor, lengths: Tensor) -> Tensor:
        """``(B, H*dirs)`` from the states; sets ``self.last_weights``."""
        mask = length_mask(lengths, states.shape[1])
        if self.pooling == "last":
            self.last_weights = None
            return last
        if self.pooling == "mean":
            weights = mask.to(states.dtype) / lengths[:, None].to(states.dtype)
        else:
            scores = self.attn_score(torch.tanh(self.attn_proj(states))).squeeze(-1)  # (B, L)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            soft = scores.softmax(-1)
            if self.pooling == "attention":
                weights = soft
            else:
                hard = nn.functional.one_hot(scores.argmax(-1), scores.shape[1]).to(states.dtype)
                weights = hard if self.pooling == "hard" else hard + soft - soft.detach()
        self.last_weights = weights.detach()
        return torch.einsum("bl,blh->bh", weights, states.masked_fill(~mask[..., None], 0.0))

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        states, last = self.states(ids, lengths)
        return self.head(self.dropout(self.pool(states, last, lengths)))


def unroll(module: nn.RNN | nn.GRU | nn.LSTM, x: Tensor) -> list[Tensor]:
    """The hidden states ``[h_1, ..., h_T]`` (each ``(B, H)``) of a one-layer, unidirectional,
    batch-first PyTorch recurrent layer on ``x (B, T, D)``, computed step by step with its
    weights, so that each ``h_t`` is a node of the graph (for ``dL/dh_t``)."""
    if module.num_layers != 1 or module.bidirectional or not module.batch_first:
        raise ValueError("unroll takes a one-layer, unidirectional, batch-first module")
    w_ih, w_hh = module.weight_ih_l0, module.weight_hh_l0
    b_ih = module.bias_ih_l0 if module.bias else torch.zeros(w_ih.shape[0], dtype=x.dtype)
    b_hh = module.bias_hh_l0 if module.bias else torch.zeros(w_hh.shape[0], dtype=x.dtype)
    hidden = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    states = []
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if isinstance(module, nn.LSTM):
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif isinstance(module, nn.GRU):
            ir, iz, in_ = gi.chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
        else:
            act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
            h = act(gi + gh)
        states.append(h)
    return states


def hidden_gradient_norms(model: RecurrentClassifier, ids: Tensor, labels: Tensor) -> Tensor:
    """``||dLoss/dh_t||`` for ``t = 1..T``, averaged over the batch ``(T,)``: the loss is the
    mean cross-entropy of the last-state classifier on full-length ``ids (B, T)`` (no padding).

    Scratch cell: the ``g_h`` of :func:`rnn_bptt`; PyTorch cells: autograd through
    :func:`unroll`. Unidirectional models only."""
    if model.bidirectional:
        raise ValueError("per-step gradients are defined here for unidirectional models")
    x = model.embedding(ids).detach()
    if model.cell == "scratch":
        rnn = model.rnn
        h, _, cache = rnn_forward(x.transpose(0, 1).detach(), None, rnn.W_hx.detach(),
                                  rnn.W_hh.detach(), None if rnn.b_h is None else rnn.b_h.detach(),
                                  activation=rnn.activation)
        last = h[-1].requires_grad_()
        loss = nn.functional.cross_entropy(model.head(last), labels)
        (g_last,) = torch.autograd.grad(loss, last)
        grad_h = torch.zeros_like(h)
        grad_h[-1] = g_last
        g_h = rnn_bptt(cache, rnn.W_hx.detach(), rnn.W_hh.detach(), grad_h=grad_h)["g_h"]
        return g_h.norm(dim=-1).mean(1)
    states = unroll(model.rnn, x)
    loss = nn.functional.cross_entropy(model.head(states[-1]), labels)
    grads = torch.autograd.grad(loss, states)
    return torch.stack([g.norm(dim=-1).mean() for g in grads])


class GradNormTracker:
    """The global gradient norm of every optimiser step, read before any clipping: call
    :meth:`new_step` in the loss function (before ``backward``); parameter hooks add up the
    squared norms. ``norms`` is the list of per-step norms; :meth:`remove` drops the hooks."""

    def __init__(self, model: nn.Module):
        self.squares: list[float] = []
        self._handles = [p.register_hook(self._add) for p in model.parameters()
                         if p.requires_grad]

    def _add(self, grad: Tensor) -> None:
        if self.squares:
            self.squares[-1] += float(grad.detach().pow(2).sum())

    def new_step(self) -> None:
        self.squares.append(0.0)

    def tracked(self, loss_fn: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Any]:
        """``loss_fn`` that first opens a new step (for :func:`helpers.training.fit`)."""
        def loss_with_new_step(model: nn.Module, batch: Any) -> Any:
            self.new_step()
            return loss_fn(model, batch)

        return loss_with_new_step

    @property
    def norms(self) -> list[float]:
        return [s ** 0.5 for s in self.squares]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def predict_labels(model: nn.Module, batches) -> tuple[Tensor, Tensor, float]:
    """``(y_true (N,), y_pred (N,), mean cross-entropy)`` over ``(ids, lengths, labels)``
    batches, in eval mode."""
    model.eval()
    trues, preds, total, count = [], [], 0.0, 0
    device = next(model.parameters()).device
    for ids, lengths, labels in batches:
        logits = model(ids.to(device), lengths.to(device))
        total += float(nn.functional.cross_entropy(logits, labels.to(device), reduction="sum"))
        count += len(labels)
        trues.append(labels)
        preds.append(logits.argmax(-1).cpu())
    return torch.cat(trues), torch.cat(preds), total / max(count, 1)


def classification_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor],
                        ) -> tuple[Tensor, int]:
    """Mean cross-entropy of ``model(ids (B, L), lengths (B,))`` against ``labels (B,)``, and
    ``B`` (the loss function of :func:`helpers.training.fit`)."""
    ids, lengths, labels = batch
    return nn.functional.cross_entropy(model(ids, lengths), labels), len(labels)


def score_classifier(model: nn.Module, data: EncodedReviews,
                     batch_size: int = 256) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (class 1 positive) and mean cross-entropy ``loss`` of
    ``model`` on ``data``, with ``correct (N,)``: 1.0 where the prediction is right, in the
    order of ``data`` (for paired comparisons of two models on the same texts)."""
    y_true, y_pred, loss = predict_labels(model, data.batches(batch_size, shuffle=False))
    return classification_metrics(y_true, y_pred) | {"loss": loss,
                                                     "correct": (y_true == y_pred).float()}


def fit_classifier(model: nn.Module, train: EncodedReviews, val: EncodedReviews | None,
                   optimizer: torch.optim.Optimizer, max_epochs: int, batch_size: int,
                   generator: torch.Generator, *, patience: int | None = 1,
                   monitor: str = "val_loss", clip_grad_norm: float | None = None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   loss_fn: Callable[[nn.Module, Any], Any] = classification_loss,
                   device: torch.device | str | None = None, desc: str = "train") -> History:
    """Train a sequence classifier with :func:`helpers.training.fit` on length-bucketed,
    shuffled batches of ``train`` (order from ``generator``).

    With ``val``, each epoch's row gets ``val_loss`` and ``val_accuracy``. With ``patience``
    (needs ``val``), training stops once ``monitor`` (``val_loss``, lower is better, or
    ``val_accuracy``, higher is better) has not improved for ``patience`` epochs, and the
    weights of the best epoch are restored; ``patience=None`` trains all ``max_epochs``.
    ``scheduler`` steps after every batch.
    """
    if patience is not None and val is None:
        raise ValueError("early stopping (patience) needs a validation set")
    if monitor not in ("val_loss", "val_accuracy"):
        raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy', got {monitor!r}")

    def evaluate(model: nn.Module) -> dict[str, float]:
        scores = score_classifier(model, val)
        return {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}

    mode = "min" if monitor == "val_loss" else "max"
    callbacks = [] if patience is None else [EarlyStopping(monitor, mode, patience)]
    return fit(model, lambda epoch: train.batches(batch_size, generator), loss_fn, optimizer,
               max_epochs, evaluate=None if val is None else evaluate,
               scheduler=scheduler, clip_grad_norm=clip_grad_norm, device=device,
               callbacks=callbacks, desc=desc)
