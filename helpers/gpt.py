"""A GPT-2 written from scratch, readable in one sitting (the structure of OpenAI's GPT-2).

Shapes: ``input_ids (B, T)``, hidden states ``(B, T, n_embd)``, logits ``(B, T, vocab)``.
Attention is the project's hand-written ``helpers.attention.scaled_dot_product_attention``
(no ``nn.MultiheadAttention``, no fused kernels), under a registered causal mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.attention import scaled_dot_product_attention
from helpers.generation import filter_logits


@dataclass
class GPTConfig:
    """Sizes of the model; the defaults are the handout's small GPT-2."""

    vocab_size: int
    block_size: int = 128      # context length
    n_layer: int = 3
    n_head: int = 3
    n_embd: int = 192
    dropout: float = 0.1
    tie_weights: bool = True   # lm_head shares the token-embedding matrix (as GPT-2 does)


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention with GPT-2's fused ``c_attn`` and ``c_proj``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} not divisible by n_head={config.n_head}")
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        causal = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("bias", causal.view(1, 1, config.block_size, config.block_size),
                             persistent=False)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None,
                cache: list[Tensor] | None = None) -> Tensor:
        """``x (B, T, C)`` -> ``(B, T, C)``. With ``cache`` (a list, empty at the first call)
        the keys and values of earlier calls are prepended and the extended ones stored, so
        incremental decoding reads each new token once; ``attention_mask`` then covers the
        cached positions too ``(B, T_cached + T)``."""
        batch, length, channels = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, channels // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        total = k.shape[2]
        mask = self.bias[:, :, total - length:total, :total]  # (1, 1, T, T_total)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :].bool()  # padded keys are invisible
        y, _ = scaled_dot_product_attention(
            q, k, v, mask, dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(batch, length, channels)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: ``c_fc`` (4×), GELU, ``c_proj``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None,
                cache: list[Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attention_mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """Token + learned position embeddings, ``n_layer`` blocks, final norm, LM head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> list[list[Tensor]]:
        """An empty key/value cache for :meth:`forward`: one list per block."""
        return [[] for _ in self.h]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None,
                cache: list[list[Tensor]] | None = None) -> dict[str, Tensor | None]:
        """Logits ``(B, T, vocab)``; with ``labels (B, T)`` also the mean next-token loss,
        labels shifted inside, -100 ignored (as Hugging Face does). With ``cache`` (from
        :meth:`new_cache`) the tokens continue those of earlier calls: positions go on from
        there and attention reads the cached keys and values."""
        batch, length = input_ids.shape
        start = cache[0][0].shape[2] if cache and cache[0] else 0
        if start + length > self.config.block_size:
            raise ValueError(f"sequence length {start + length} > block_size "
                             f"{self.config.block_size}")
        positions = torch.arange(start, start + length, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, attention_mask, None if cache is None else cache[i])
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return {"logits": logits, "loss": loss}

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_length: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, pad_token_id: int = 0,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 unconditional_ids: Tensor | None = None, guidance: float = 1.0) -> Tensor:
        """Sample continuations of ``input_ids (B, T0)`` up to ``max_length`` tokens in all.

        ``temperature`` 0 means greedy. Rows that emit ``eos_token_id`` are padded with
        ``pad_token_id`` afterwards. With ``use_cache`` each step feeds only the new token and
        reuses the cached keys and values (the same tokens, far fewer operations); past
        ``block_size`` the context is cropped and recomputed. With ``unconditional_ids
        (B, T0)`` (e.g. a start token instead of a control token) and ``guidance`` γ, the
        next-token logits are classifier-free guided, ``u + γ (c − u)``: ``c`` continues
        ``input_ids``, ``u`` the same tokens after ``unconditional_ids`` (Ho & Salimans 2022;
        Sanchez et al. 2023 for language models); γ = 1 is plain sampling, γ > 1 strengthens
        the condition. Returns ``(B, ≤ max_length)``.
        """
        self.eval()
        batch, prompt_length = input_ids.shape
        guided = unconditional_ids is not None and guidance != 1.0
        if guided and unconditional_ids.shape != input_ids.shape:
            raise ValueError(f"unconditional_ids {tuple(unconditional_ids.shape)} must have the "
                             f"shape of input_ids {tuple(input_ids.shape)}")
        ids = torch.cat([input_ids, unconditional_ids]) if guided else input_ids  # (B or 2B, T)
        finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        cache = None
        while ids.shape[1] < max_length and not finished.all():
            if use_cache and cache is not None and ids.shape[1] <= self.config.block_size:
                logits = self(ids[:, -1:], cache=cache)["logits"][:, -1]  # (B or 2B, vocab)
            else:
                fits = use_cache and ids.shape[1] <= self.config.block_size
                cache = self.new_cache() if fits else None
                context = ids[:, -self.config.block_size:]
                logits = self(context, cache=cache)["logits"][:, -1]  # (B or 2B, vocab)
            if guided:
                conditional, unconditional = logits.chunk(2)
                logits = unconditional + guidance * (conditional - unconditional)  # (B, vocab)
            if temperature == 0:
                next_id = logits.argmax(-1)
            else:
                probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
                next_id = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            next_id = torch.where(finished, torch.full_like(next_id, pad_token_id), next_id)
            ids = torch.cat([ids, next_id.repeat(2 if guided else 1)[:, None]], dim=1)
            if eos_token_id is not None:
                finished |= next_id == eos_token_id
        return torch.cat([input_ids, ids[:batch, prompt_length:]], dim=1)


@torch.no_grad()
def generate_conditioned(model: GPT2, tokenizer, control_token: str, n: int, max_length: int,
                         temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu", guidance: float = 1.0,
                         null_token: str | None = None) -> list[str]:
    """``n`` texts sampled after ``control_token`` (e.g. ``"<POS>"``), decoded without
    special tokens; generation stops at ``<eos>``. With ``null_token`` (the start token of
    texts trained without a control token) and ``guidance`` γ ≠ 1, sampling is
    classifier-free guided (see :meth:`GPT2.generate`)."""
    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        if found == tokenizer.unk_token_id or found is None:
            raise ValueError(f"{token!r} is not a token of this tokenizer")
        return found

    start = torch.full((n, 1), token_id(control_token), dtype=torch.long, device=device)
    null = (torch.full((n, 1), token_id(null_token), dtype=torch.long, device=device)
            if null_token is not None else None)
    ids = model.generate(start, max_length, temperature, top_k, top_p,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=generator,
                         unconditional_ids=null, guidance=guidance)
    return [tokenizer.decode(row[1:], skip_special_tokens=True).strip() for row in ids.cpu()]
