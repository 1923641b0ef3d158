"""Byte-level character language model (sharif-1402-hw3 P9): encoding, paragraphs, padding,
``shift_left``, a hand-written GRU cell, the GRU language model and its padding-aware loss.

Index convention of the handout: 0 is padding, a byte ``b`` (an ASCII code for English text)
has index ``b + 1``; the head predicts 256 classes (class = index; class 0 is never a target).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from helpers.text import LengthBucketSampler
from helpers.training import autocast, evaluate_loss

PAD = 0
VOCAB = 256


def encode(text: str) -> Tensor:
    """UTF-8 bytes of ``text`` plus one, ``(n_bytes,)`` int64 (byte 255 never occurs in UTF-8)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) + 1


def decode(ids: Sequence[int] | Tensor) -> str:
    """Inverse of :func:`encode`; padding (0) is dropped, invalid UTF-8 replaced."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return bytes(int(i) - 1 for i in values if int(i) > 0).decode("utf-8", errors="replace")


def paragraphs(text: str, min_chars: int = 30, min_words: int = 4) -> list[str]:
    """Blank-line-separated paragraphs with more than ``min_chars`` characters and more than
    ``min_words`` words (the handout's filter)."""
    blocks = (block.strip() for block in re.split(r"\n\s*\n", text))
    return [b for b in blocks if len(b) > min_chars and len(b.split()) > min_words]


def split_train_val(items: Sequence, val_fraction: float,
                    generator: torch.Generator) -> tuple[list, list]:
    """Shuffle ``items`` with ``generator`` and split off the last ``val_fraction``."""
    order = torch.randperm(len(items), generator=generator).tolist()
    n_val = int(round(len(items) * val_fraction))
    shuffled = [items[i] for i in order]
    return shuffled[n_val:], shuffled[:n_val]


def chunk(ids: Tensor, max_len: int) -> list[Tensor]:
    """Cut ``ids (T,)`` into consecutive pieces of at most ``max_len`` (length capping)."""
    return [ids[i:i + max_len] for i in range(0, len(ids), max_len)]


def joined(texts: Sequence[str], generator: torch.Generator | None = None) -> Tensor:
    """:func:`encode` of the paragraphs joined by blank lines (the corpus's own separator),
    in a fresh random order drawn from ``generator`` if one is given; ``(n_bytes,)``."""
    order = (torch.randperm(len(texts), generator=generator).tolist() if generator is not None
             else range(len(texts)))
    return encode("\n\n".join(texts[i] for i in order))


def stream_batches(ids: Tensor, batch_size: int, seq_len: int) -> list[tuple[Tensor, Tensor]]:
    """Truncated-BPTT chunks: ``ids (N,)`` cut into ``batch_size`` parallel streams, then into
    consecutive ``(inputs (B, L), targets (B, L))`` pieces (targets = inputs shifted by one
    character), so that row b of chunk i + 1 continues row b of chunk i. The last chunk may
    be shorter; fewer than ``batch_size`` characters at the end are dropped."""
    per_stream = (len(ids) - 1) // batch_size
    if per_stream < 1:
        raise ValueError(f"{len(ids)} characters cannot fill {batch_size} streams")
    inputs = ids[:batch_size * per_stream].view(batch_size, per_stream)
    targets = ids[1:batch_size * per_stream + 1].view(batch_size, per_stream)
    return [(inputs[:, i:i + seq_len], targets[:, i:i + seq_len])
            for i in range(0, per_stream, seq_len)]


class CarriedState:
    """The loss of ``fit`` / ``evaluate_loss`` for truncated backpropagation through time.

    Called with ``(inputs (B, L), targets (B, L))`` chunks from :func:`stream_batches`, it runs
    the model from the hidden state the previous chunk left (detached: gradients stop at the
    chunk boundary, the state does not) and returns ``(mean nats/char, characters)``.
    ``reset()`` starts every stream from the zero state again (at each new epoch).
    """

    def __init__(self, autocast_dtype: torch.dtype | None = None):
        self.autocast_dtype = autocast_dtype
        self.hidden: Tensor | None = None

    def reset(self) -> None:
        self.hidden = None

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        inputs, targets = batch
        with autocast(inputs.device.type, self.autocast_dtype):
            logits, hidden = model(inputs, self.hidden)
        self.hidden = hidden.detach()
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # the loss in float32
        return loss_fn(logits, targets), targets.numel()


def stream_loss(model: nn.Module, ids: Tensor, batch_size: int, seq_len: int,
                device: torch.device | str | None = None,
                autocast_dtype: torch.dtype | None = None) -> float:
    """Mean nats/char of ``model`` over ``ids (N,)`` read as ``batch_size`` streams whose
    hidden state is carried from chunk to chunk (every character after a stream's first sees
    all the text before it, as in char-rnn's evaluation)."""
    return evaluate_loss(model, stream_batches(ids, batch_size, seq_len),
                         CarriedState(autocast_dtype), device)


def pad(tensor_list: Sequence[Tensor], pad_value: int = PAD) -> Tensor:
    """Right-pad 1-D tensors to ``(B, T_max)``."""
    return pad_sequence(list(tensor_list), batch_first=True, padding_value=pad_value)


def shift_left(tensor_list: Sequence[Tensor], pad_value: int = PAD) -> list[Tensor]:
    """Next-character targets: each ``x (T,)`` becomes ``[x_1, ..., x_{T-1}, pad]``."""
    return [torch.cat([x[1:], x.new_full((1,), pad_value)]) for x in tensor_list]


def batches(sequences: Sequence[Tensor], batch_size: int,
            generator: torch.Generator | None = None) -> list[list[Tensor]]:
    """Lists of sequences from :class:`helpers.text.LengthBucketSampler` (pools of 50 batches
    sorted by length, so that padding stays small), shuffled with ``generator`` if given."""
    sampler = LengthBucketSampler([len(s) for s in sequences], batch_size, generator,
                                  pool_batches=50)
    return [[sequences[i] for i in index] for index in sampler]


class GRUCell(nn.Module):
    """A GRU cell written from its equations, with ``nn.GRU``'s parameter layout (r, z, n):

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        bound, h3 = 1 / math.sqrt(hidden_size), 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(h3, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(h3, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(h3).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(h3).uniform_(-bound, bound))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """``x (B, D)``, ``h (B, H)`` -> ``h' (B, H)``."""
        ir, iz, in_ = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=-1)
        hr, hz, hn = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h


class ScratchGRU(nn.Module):
    """A stacked, batch-first GRU built from :class:`GRUCell` (same interface and parameter
    names, per layer, as ``nn.GRU(batch_first=True)``; dropout between layers in training)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.hidden_size, self.num_layers, self.dropout = hidden_size, num_layers, dropout
        self.cells = nn.ModuleList(GRUCell(input_size if i == 0 else hidden_size, hidden_size)
                                   for i in range(num_layers))

    @classmethod
    def from_torch(cls, gru: nn.GRU) -> ScratchGRU:
        """A copy of a unidirectional, batch-first ``nn.GRU``'s weights."""
        if gru.bidirectional or not gru.batch_first or not gru.bias:
            raise ValueError("from_torch takes a unidirectional, batch-first nn.GRU with biases")
        new = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.dropout)
        with torch.no_grad():
            for i, cell in enumerate(new.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(gru, f"{name}_l{i}"))
        return new.to(gru.weight_ih_l0.dtype)

    def forward(self, x: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x (B, T, D)``, ``hidden (L, B, H)`` -> outputs ``(B, T, H)``, last ``(L, B, H)``."""
        if hidden is None:
            hidden = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        last = []
        for i, cell in enumerate(self.cells):
            if i > 0 and self.training and self.dropout > 0:
                x = F.dropout(x, self.dropout)
            h, outputs = hidden[i], []
            for t in range(x.shape[1]):
                h = cell(x[:, t], h)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)  # (B, T, H)
            last.append(h)
        return x, torch.stack(last)


class CharGRU(nn.Module):
    """The handout's model: byte embedding -> stacked GRU -> dropout -> linear head (256 classes).

    ``forward(x, hidden=None)`` takes a list of variable-length index tensors or a padded
    ``(B, T)`` tensor and returns ``(logits (B, T_max, 256), hidden (L, B, H))``. Right padding
    never changes the outputs at real positions, so by default a list is run padded (on CPU
    ``nn.GRU`` is ~6x faster than on a packed batch); with ``pack=True`` it is packed and the
    returned hidden state is each sequence's true last state (otherwise it is the state after
    the padding).
    """

    pack: bool = False

    def __init__(self, embed_dim: int = 64, hidden_size: int = 128, num_layers: int = 2,
                 dropout: float = 0.1, scratch: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embed_dim, padding_idx=PAD)
        kind = ScratchGRU if scratch else nn.GRU
        kwargs = {} if scratch else {"batch_first": True}
        self.gru = kind(embed_dim, hidden_size, num_layers,
                        dropout=dropout if num_layers > 1 else 0.0, **kwargs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, VOCAB)

    def forward(self, x: Sequence[Tensor] | Tensor,
                hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if isinstance(x, Tensor):
            out, hidden = self.gru(self.embedding(x), hidden)
        else:
            lengths = torch.tensor([len(s) for s in x])
            padded = pad(x)
            if self.pack and isinstance(self.gru, nn.GRU):
                packed = pack_padded_sequence(self.embedding(padded), lengths, batch_first=True,
                                              enforce_sorted=False)
                out, hidden = self.gru(packed, hidden)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
            else:  # right padding does not change the outputs at real positions
                out, hidden = self.gru(self.embedding(padded), hidden)
        return self.head(self.dropout(out)), hidden


def loss_fn(logits: Tensor, targets: Tensor | Sequence[Tensor], pad_value: int = PAD) -> Tensor:
    """Mean cross-entropy (nats/char) over non-padding targets; ``logits (B, T, 256)``."""
    if not isinstance(targets, Tensor):
        targets = pad(targets, pad_value)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=pad_value)


def lm_loss(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, int]:
    """``fit``'s loss: next-character cross-entropy of a list of sequences, and its char count."""
    targets = pad(shift_left(batch))
    logits, _ = model(list(batch))
    return loss_fn(logits, targets), int((targets != PAD).sum())


def evaluate(model: nn.Module, groups: Iterable[Sequence[Tensor]],
             device: torch.device | str | None = None,
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Character-weighted validation loss (nats/char, :func:`helpers.training.evaluate_loss`
    of :func:`lm_loss`: every paragraph read from the zero state) and the same in bits per
    character."""
    with autocast(torch.device(device or "cpu").type, autocast_dtype):
        loss = evaluate_loss(model, groups, lm_loss, device)
    return {"val_loss": loss, "val_bpc": loss / math.log(2)}


WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, inner apostrophes); punctuation and digits
    dropped."""
    return WORD.findall(text.lower())


def real_word_share(text: str, vocabulary: set[str]) -> float:
    """Share of the words of ``text`` found in ``vocabulary`` (e.g. every word of the training
    text); 0 for a text without words."""
    found = words(text)
    return sum(w in vocabulary for w in found) / len(found) if found else 0.0
