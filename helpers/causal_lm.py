"""Causal language models for fine-tuning experiments.

- loading: :func:`load_causal_lm` resolves a model through :mod:`helpers.nb.assets` (a hub id,
  a packaged GGUF file dequantised once per machine into the shared cache by
  :func:`dequantised_gguf`, or ``DATA_DIR/models``) or builds the tiny
  random Llama of the smoke profile (:data:`TINY_RANDOM`), saved and loaded through the same
  ``from_pretrained`` path;
- data: :func:`text_sequences` cuts a raw corpus (WikiText-2) into paragraphs of at most
  ``seq_len`` tokens; batches come from :func:`helpers.text.pad_collate`, which pads on the
  right and sets padded labels to -100;
- loss and evaluation: :func:`causal_lm_loss` (``helpers.training.fit``'s signature; also the
  loss of the scratch :class:`helpers.gpt.GPT2`, which shares the interface),
  :func:`evaluate_causal_lm` (token-weighted loss and perplexity) and
  :func:`validation_metrics` (the same loss with its standard error over sequences, from
  :func:`sequence_losses`; :func:`paired_loss_difference` compares two models on them);
- fine-tuning: :func:`finetune` trains one method with ``fit`` and measures its cost with
  :class:`helpers.nb.runtime.measure_cost`;
- LoRA plumbing: :func:`peft_lora`, :func:`lora_module_names`, :func:`copy_lora_weights`,
  and :func:`conv1d_to_linear` for GPT-2's ``Conv1D`` projections.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from helpers.nb.runtime import measure_cost
from helpers.training import count_parameters, evaluate_loss, fit, warmup_cosine_lambda

TINY_RANDOM = "tiny-random-llama"  # the smoke profile's model: random weights, no asset


# ---------------------------------------------------------------------------- loading

@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and warnings while loading or saving a model (GGUF
    dequantisation and ``from_pretrained`` print bars; the GGUF loader's bar is a plain
    ``tqdm`` that transformers' switch does not reach, so it is disabled here too)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    gguf_bar = gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_utils.tqdm = partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_bar
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, max_positions: int = 256,
                      tie_word_embeddings: bool = True):
    """A small ``LlamaConfig`` of SmolLM2's shape (grouped-query attention, tied embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                       intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       max_position_embeddings=max_positions,
                       tie_word_embeddings=tie_word_embeddings, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)


def build_tiny_random_lm(folder: Path | str, texts: Sequence[str], vocab_size: int = 512,
                         seed: int = 0, **config: Any) -> Path:
    """Train a byte-level BPE tokenizer on ``texts``, build a randomly initialised
    ``LlamaForCausalLM`` (:func:`tiny_llama_config`) and save both into ``folder``."""
    from transformers import LlamaForCausalLM

    from helpers.text import train_bpe_tokenizer

    folder = Path(folder)
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), **config))
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def dequantised_cache_dir(folder: str | Path, gguf_file: str, dtype: torch.dtype) -> Path:
    """Where :func:`dequantised_gguf` saves ``folder/gguf_file`` dequantised to ``dtype``: the
    shared cache (:mod:`helpers.nb.cache`), keyed by the file (name, size, content hash),
    the dtype and the versions of the packages that read and write it."""
    from helpers.nb import cache

    key = cache.cache_key(cache.file_fingerprint(Path(folder) / gguf_file), str(dtype),
                          cache.package_versions("transformers", "torch", "gguf", "tokenizers"))
    dtype_name = str(dtype).removeprefix("torch.")
    return cache.cache_dir("gguf-dequantised") / f"{Path(gguf_file).stem}-{dtype_name}-{key}"


def dequantised_gguf(folder: str | Path, gguf_file: str, dtype: torch.dtype) -> Path:
    """A ``save_pretrained`` folder (model and tokenizer) of the GGUF model ``folder/gguf_file``
    dequantised to ``dtype``, dequantised only when :func:`dequantised_cache_dir` holds none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from helpers.nb import cache

    target = dequantised_cache_dir(folder, gguf_file, dtype)
    if not (target / "config.json").exists():
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=gguf_file, dtype=dtype,
                quantization_config=GgufConfig(dequantize=True))
        # dense weights now: drop the GGUF loader's marks, which make save_pretrained refuse
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with cache.atomic_path(target) as tmp, quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def load_causal_lm(name: str, profile: str, dtype: torch.dtype = torch.float32, *,
                   tiny_dir: Path | str | None = None, tiny_texts: Sequence[str] = (),
                   tiny_vocab_size: int = 512):
    """``(model, tokenizer, source)`` for ``name``, in eval mode, pad token set.

    ``name`` is a key of :data:`helpers.nb.assets.MODELS`, a hub id, a local folder, or
    :data:`TINY_RANDOM`: then a tiny random Llama with a tokenizer trained on ``tiny_texts``
    is written into ``tiny_dir`` first and loaded from there like any saved model. GGUF
    weights (the packaged SmolLM2) are dequantised to ``dtype`` by :func:`dequantised_gguf` and
    always loaded from its folder, so a cold and a warm cache give the same model. A missing
    model fails with the one :class:`helpers.nb.assets.AssetError` of
    :func:`helpers.nb.assets.model_path`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.nb import assets

    if name == TINY_RANDOM:
        if tiny_dir is None or not tiny_texts:
            raise ValueError(f"{TINY_RANDOM!r} needs tiny_dir and tiny_texts")
        path, source = str(build_tiny_random_lm(tiny_dir, tiny_texts, tiny_vocab_size)), "random"
    elif Path(name).is_dir():
        path, source = name, "folder"
    else:
        resolved = assets.model_path(name, profile)
        path, source = resolved.path, resolved.source
        if resolved.gguf_file:
            path = str(dequantised_gguf(path, resolved.gguf_file, dtype))
            source = f"{source} (GGUF, dequantised)"
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, source


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every transformers ``Conv1D`` (GPT-2's ``x @ W + b`` with ``W (in, out)``) by
    the equivalent ``nn.Linear`` (``W.T``), in place, so LoRA can wrap it; returns ``model``."""
    from transformers.pytorch_utils import Conv1D

    for name, child in list(model.named_children()):
        if isinstance(child, Conv1D):
            d_in, d_out = child.weight.shape
            linear = nn.Linear(d_in, d_out, dtype=child.weight.dtype, device=child.weight.device)
            with torch.no_grad():
                linear.weight.copy_(child.weight.T)
                linear.bias.copy_(child.bias)
            setattr(model, name, linear)
        else:
            conv1d_to_linear(child)
    return model


# ------------------------------------------------------------------------------- data

def paragraphs(raw: str, skip_headings: bool = True) -> list[str]:
    """Non-empty lines of a WikiText-style file; headings (``= Title =``) dropped."""
    lines = (line.strip() for line in raw.splitlines())
    return [line for line in lines
            if line and not (skip_headings and line.startswith("=") and line.endswith("="))]


def text_sequences(texts: Sequence[str], tokenizer, seq_len: int, n: int,
                   generator: torch.Generator | None = None, min_tokens: int = 2) -> list[Tensor]:
    """``n`` id tensors ``(T_i,)``, ``min_tokens <= T_i <= seq_len``: texts in a seeded random
    order, each tokenised without special tokens and truncated to ``seq_len``."""
    order = (torch.randperm(len(texts), generator=generator).tolist() if generator is not None
             else range(len(texts)))
    out: list[Tensor] = []
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"][:seq_len]
        if len(ids) >= min_tokens:
            out.append(torch.tensor(ids, dtype=torch.long))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} texts have >= {min_tokens} tokens; {n} were asked for")


def lm_loader(sequences: Sequence[Tensor], pad_id: int, batch_size: int, shuffle: bool = False,
              generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    """Batches ``{input_ids, attention_mask, labels}`` ``(B, T)``; padded labels are -100."""
    from helpers.text import pad_collate

    return torch.utils.data.DataLoader(list(sequences), batch_size=batch_size, shuffle=shuffle,
                                       generator=generator,
                                       collate_fn=partial(pad_collate, pad_id=pad_id))


# ------------------------------------------------------------------ loss and evaluation

def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Mean next-token loss of a padded batch ``{input_ids, attention_mask, labels}`` ``(B, T)``
    and the number of predicted tokens, as ``helpers.training.fit`` expects. The model shifts
    the labels and skips -100 itself: a Hugging Face causal LM, or :class:`helpers.gpt.GPT2`,
    which has the same interface."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"])
    return out["loss"], int((batch["labels"][:, 1:] != -100).sum())


def evaluate_causal_lm(model: nn.Module, batches: Iterable[dict[str, Tensor]],
                       device: torch.device | str | None = None) -> dict[str, float]:
    """Token-weighted mean loss (nats/token, :func:`helpers.training.evaluate_loss` of
    :func:`causal_lm_loss`) and its perplexity over padded batches."""
    loss = evaluate_loss(model, batches, causal_lm_loss, device)
    return {"val_loss": loss, "val_perplexity": math.exp(loss)}


@torch.no_grad()
def sequence_losses(model: nn.Module, batches: Iterable[dict[str, Tensor]],
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per sequence, the summed next-token loss (nats) and the number of scored tokens, both
    ``(n_sequences,)`` in batch order: the units of a standard error of the validation loss
    (:func:`helpers.metrics.ratio_mean_se`) and of paired comparisons between models
    evaluated on the same sequences. Their pooled ratio is :func:`evaluate_causal_lm`'s
    loss."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for batch in batches:
            batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                     reduction="none")  # (B, T - 1), 0 on ignored labels
            sums.append(losses.sum(1).cpu())
            counts.append((labels != -100).sum(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums).double(), torch.cat(counts).double()


def validation_metrics(model: nn.Module, batches: Iterable[dict[str, Tensor]],
                       device: torch.device | str | None = None) -> dict[str, Any]:
    """Validation loss (nats/token, pooled over tokens), its standard error over sequences,
    the perplexity, and the per-sequence ``sequence_loss``/``sequence_tokens`` lists
    (:func:`sequence_losses`) for paired comparisons."""
    from helpers.metrics import ratio_mean_se

    sums, counts = sequence_losses(model, batches, device)
    loss, se = ratio_mean_se(sums, counts)
    return {"val_loss": loss, "val_loss_se": se, "val_perplexity": math.exp(loss),
            "sequence_loss": sums.tolist(), "sequence_tokens": counts.tolist()}


def paired_loss_difference(a: MethodResult | dict, b: MethodResult | dict) -> tuple[float, float]:
    """Validation loss of ``a`` minus that of ``b`` (nats/token) on the same sequences, and its
    standard error over sequences (the per-sequence differences of summed losses, pooled by
    :func:`helpers.metrics.ratio_mean_se`)."""
    from helpers.metrics import ratio_mean_se

    def parts(x):
        return (x.sequence_loss, x.sequence_tokens) if isinstance(x, MethodResult) else (
            x["sequence_loss"], x["sequence_tokens"])

    (loss_a, tokens_a), (loss_b, tokens_b) = parts(a), parts(b)
    if list(tokens_a) != list(tokens_b):
        raise ValueError("paired_loss_difference needs both evaluated on the same sequences")
    return ratio_mean_se([x - y for x, y in zip(loss_a, loss_b, strict=True)], tokens_a)


# ---------------------------------------------------------------------- fine-tuning

@dataclass
class MethodResult:
    """One fine-tuning method: its costs and its validation metrics."""

    method: str
    rank: int | None
    lr: float | None
    trainable: int
    total: int
    val_loss: float
    val_perplexity: float
    steps: int = 0
    s_per_step: float = float("nan")
    cpu_s_per_step: float = float("nan")
    peak_mb: float = float("nan")
    step_losses: list[float] = field(default_factory=list)
    val_loss_se: float = float("nan")
    sequence_loss: list[float] = field(default_factory=list, repr=False)
    sequence_tokens: list[float] = field(default_factory=list, repr=False)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total

    def row(self) -> dict[str, Any]:
        """The table row (no per-step or per-sequence losses)."""
        return {"method": self.method, "rank": self.rank, "lr": self.lr,
                "trainable": self.trainable, "trainable_%": self.trainable_pct,
                "val_loss": self.val_loss, "val_loss_se": self.val_loss_se,
                "val_perplexity": self.val_perplexity,
                "steps": self.steps, "s/step": self.s_per_step,
                "cpu_s/step": self.cpu_s_per_step, "peak_MB": self.peak_mb}


def finetune(model: nn.Module, method: str, train_loader, eval_loader, *, lr: float,
             epochs: int = 1, rank: int | None = None, warmup_fraction: float = 0.1,
             weight_decay: float = 0.0, clip_grad_norm: float | None = 1.0,
             device: torch.device | str = "cpu", reference_total: int | None = None,
             ) -> MethodResult:
    """Train the trainable parameters of ``model`` with AdamW (linear warm-up, cosine decay)
    through :func:`helpers.training.fit`, measuring the training alone
    (:class:`helpers.nb.runtime.measure_cost`), then evaluate (:func:`validation_metrics`:
    the loss, its standard error and the per-sequence losses). ``reference_total`` (the base
    model's size) is the denominator of the trainable percentage (prefix tuning adds
    parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{method}: the model has no trainable parameters")
    steps = epochs * len(train_loader)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_lambda(max(1, round(warmup_fraction * steps)), steps))
    model.to(device)
    with measure_cost(device) as cost:
        history = fit(model, train_loader, causal_lm_loss, optimizer, epochs, scheduler=schedule,
                      clip_grad_norm=clip_grad_norm, device=device, desc=method)
    metrics = validation_metrics(model, eval_loader, device)
    trainable = count_parameters(model, trainable_only=True)
    return MethodResult(method, rank, lr, trainable, reference_total or count_parameters(model),
                        metrics["val_loss"], metrics["val_perplexity"], steps,
                        cost.seconds / steps, cost.cpu_seconds / steps, cost.peak_mb,
                        list(history.step_losses), metrics["val_loss_se"],
                        metrics["sequence_loss"], metrics["sequence_tokens"])


# ------------------------------------------------------------------------------ LoRA

def peft_lora(model: nn.Module, r: int, alpha: float, targets: Sequence[str],
              dropout: float = 0.0) -> nn.Module:
    """``peft``'s LoRA on the modules whose name ends in one of ``targets`` (no biases)."""
    import peft

    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                             lora_dropout=dropout, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 calls a method transformers 5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        return peft.get_peft_model(model, config)


def _prefix_as_cache(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: peft's prefix forward hands the base model its prefix (a ``Cache``) as
    ``past_key_values=``, the keyword transformers 5 deprecates; pass it as ``cache=``."""
    if "past_key_values" in kwargs and "cache" not in kwargs:
        kwargs["cache"] = kwargs.pop("past_key_values")
    return args, kwargs


def peft_prefix_tuning(model: nn.Module, num_virtual_tokens: int) -> nn.Module:
    """``peft``'s prefix tuning: trainable key/value prefixes in every layer. ``model`` (now the
    wrapper's base model) receives the prefix under transformers 5's name ``cache=``."""
    import inspect

    import peft

    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    with warnings.catch_warnings():  # peft 0.21 calls a method transformers 5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        prefixed = peft.get_peft_model(model, config)
    if "cache" in inspect.signature(model.forward).parameters:
        model.register_forward_pre_hook(_prefix_as_cache, with_kwargs=True)
    return prefixed


@torch.no_grad()
def init_prefix_from_tokens(prefix_model: nn.Module, input_ids: Tensor,
                            adapter: str = "default") -> None:
    """Set a ``peft`` prefix to the keys and values the frozen model computes for the real
    tokens ``input_ids (num_virtual_tokens,)`` (Li & Liang's initialisation from real words):
    the prefixed model then starts exactly as the base model reading those tokens first.

    peft stores the prefix as ``(T, layers · 2 · kv_heads · head_dim)``, viewed as
    ``(T, layers · 2, kv_heads, head_dim)`` with keys at ``2l`` and values at ``2l + 1``.
    """
    embedding = prefix_model.prompt_encoder[adapter].embedding.weight  # (T, L·2·H·D)
    if input_ids.shape != (embedding.shape[0],):
        raise ValueError(f"need {embedding.shape[0]} token ids, got shape {tuple(input_ids.shape)}")
    base = prefix_model.get_base_model()
    with prefix_model.disable_adapter():
        cache = base(input_ids=input_ids[None].to(embedding.device), use_cache=True).cache
    states = [t for layer in cache.layers for t in (layer.keys, layer.values)]  # (1, H, T, D) each
    stacked = torch.cat(states, dim=0)  # (L·2, H, T, D)
    embedding.copy_(stacked.permute(2, 0, 1, 3).reshape(embedding.shape))


_PEFT_PREFIX = "base_model.model."


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the LoRA-wrapped modules of a hand (``LoRALinear``) or ``peft`` model, in the
    base model's naming (``model.layers.0.self_attn.q_proj``)."""
    from helpers.peft import LoRALinear

    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear) or (hasattr(module, "lora_A")
                                              and isinstance(module.lora_A, nn.ModuleDict)):
            names.append(name.removeprefix(_PEFT_PREFIX))
    return names


@torch.no_grad()
def copy_lora_weights(peft_model: nn.Module, hand_model: nn.Module,
                      adapter: str = "default") -> int:
    """Copy ``peft``'s A and B of every wrapped module into the hand ``LoRALinear`` of the same
    name; returns how many modules were copied (every one, or ``KeyError``)."""
    from helpers.peft import LoRALinear

    hand = {n: m for n, m in hand_model.named_modules() if isinstance(m, LoRALinear)}
    copied = 0
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict):
            target = hand[name.removeprefix(_PEFT_PREFIX)]
            target.lora_A.copy_(module.lora_A[adapter].weight)
            target.lora_B.copy_(module.lora_B[adapter].weight)
            copied += 1
    if copied != len(hand):
        raise KeyError(f"copied {copied} modules but the hand model wraps {len(hand)}")
    return copied

