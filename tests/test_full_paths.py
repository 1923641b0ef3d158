"""The ``full`` profile's code paths, run offline so that a shape or API error shows up here and
not after a multi-GB download.

Every hub model a ``full`` profile names is built from its transformers config class at its real
architecture (the 1.5B reasoning model with 2 of its 28 layers) with random weights, and the
helper functions the notebook calls at ``full`` run on it for one optimiser step or a few tokens
on tiny data. Two seams stand in for the hub, nothing in the helpers changes:

- ``helpers.nb.assets.model_path`` resolves each hub id to a temporary folder holding the
  model's ``config.json`` (from :data:`ARCHITECTURES`) and a tokenizer;
- ``PreTrainedModel.from_pretrained`` reads that config (with the caller's config overrides,
  dtype and attention implementation) and builds the model with random weights
  (:func:`random_from_pretrained`).

Tokenizers: GPT-2's BPE from ``DATA_DIR/gpt2_tokenizer`` (the captioning notebook's own
tokenizer) for GPT-2 models, the same BPE with RoBERTa's special tokens first for RoBERTa. The
DeepSeek tokenizer is not available offline: a small byte-level BPE with the R1 special tokens
and a chat template of the R1 layout stands in for it, so the chat-template path runs.
Datasets the machine lacks at ``full`` (COCO) are replaced by their small stand-in in the same
layout (Flickr8k).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers.nb import assets, profiles

ADAPTER = "sharif-1402-hw3/Adapter"
VIT = "iust-1404-hw4/Q5"
CAPTIONING = "sharif-1402-hw3/image_captioning"
PEFT = "sharif-1404-hw3/Q3_peft"
REASONING = "sharif-1404-hw3/Q4_llm_reasoning"


# ------------------------------------------------------------------ the hub's models, offline

def _roberta(**sizes: int):
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         **sizes)


def _vit(**extra: Any):
    from transformers import ViTConfig

    return ViTConfig(**extra)  # the defaults are ViT-B/16 at 224 px


def _gpt2(**sizes: int):
    from transformers import GPT2Config

    return GPT2Config(**sizes)  # the defaults are GPT-2 small (124M)


def _r1_distill_qwen_2_layers():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                       num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=2,
                       max_position_embeddings=131072, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643,
                       dtype=torch.bfloat16)


#: every hub model a profile may name: its config at the real size, and its tokenizer's kind
ARCHITECTURES: dict[str, tuple[Callable[[], Any], str | None]] = {
    "FacebookAI/roberta-base": (_roberta, "roberta"),
    "FacebookAI/roberta-large": (lambda: _roberta(hidden_size=1024, num_hidden_layers=24,
                                                  num_attention_heads=16,
                                                  intermediate_size=4096), "roberta"),
    "google/vit-base-patch16-224": (lambda: _vit(num_labels=1000), None),  # ImageNet-1k head
    "google/vit-base-patch16-224-in21k": (_vit, None),  # no head: loaded as ViTModel
    "distilbert/distilgpt2": (lambda: _gpt2(n_layer=6), "gpt2"),
    "openai-community/gpt2-medium": (lambda: _gpt2(n_embd=1024, n_layer=24, n_head=16), "gpt2"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (_r1_distill_qwen_2_layers, "r1"),
}

R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
#: the layout of DeepSeek-R1's chat template (system prompt first, no tool calls)
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% endif %}{% endfor %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '<｜User｜>' + m['content'] }}{% elif m['role'] == 'assistant' %}"
    "{% set content = m['content'].split('</think>')[-1] %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
R1_TEXTS = ["Tom has 3 apples and gets 4 more. How many apples does Tom have now?",
            "She starts with 5 pens.\nShe buys 3 more, so 5 + 3 = 8.\nThe answer is \\boxed{8}.",
            "Check this solution. NEEDS_REFINE: yes or no."] * 4


def _gpt2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    folder = assets.dataset_dir("gpt2_tokenizer", "full", download=False)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    return vocab, [tuple(line.split()) for line in lines[1:] if line]


def _save_tokenizer(kind: str, folder: Path) -> None:
    from transformers import GPT2Tokenizer, RobertaTokenizer

    from helpers.text import train_bpe_tokenizer

    if kind == "gpt2":
        tokenizer = GPT2Tokenizer.from_pretrained(
            assets.dataset_dir("gpt2_tokenizer", "full", download=False))
    elif kind == "roberta":  # RoBERTa's vocabulary: <s> <pad> </s> <unk>, GPT-2's BPE, <mask>
        bpe, merges = _gpt2_bpe()
        vocab = {token: i for i, token in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
        vocab.update({token: i + 4 for token, i in bpe.items()})
        vocab["<mask>"] = len(vocab)
        tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=512)
    else:
        tokenizer = train_bpe_tokenizer(R1_TEXTS, 300, (R1_EOS, R1_BOS, R1_USER, R1_ASSISTANT))
        tokenizer.bos_token, tokenizer.eos_token = R1_BOS, R1_EOS
        tokenizer.chat_template = R1_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


_NOISE = 0.02 * torch.randn(1_000_003, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def fill_random(model: torch.nn.Module) -> None:
    """Random weights at memory speed: every matrix (and embedding, patch kernel, [CLS] token)
    from one fixed block of N(0, 0.02²) noise of prime length, biases 0, other vectors (norm
    scales) 1. HF's own normal initialisation costs seconds per 100M parameters on a CPU."""
    period = len(_NOISE)
    for name, param in model.named_parameters():
        flat = param.view(-1)
        if param.dim() > 1:
            whole = len(flat) // period * period
            flat[:whole].view(-1, period).copy_(_NOISE.expand(len(flat) // period, period))
            flat[whole:].copy_(_NOISE[:len(flat) - whole])
        else:
            flat.fill_(0.0 if name.endswith("bias") else 1.0)


#: arguments of from_pretrained about where and how to fetch files (the auto classes add some)
LOADING_ONLY = ("trust_remote_code", "adapter_kwargs", "revision", "code_revision", "cache_dir",
                "force_download", "proxies", "token", "local_files_only", "subfolder",
                "_commit_hash")


def random_from_pretrained(cls, path, *model_args, config=None, **kwargs):
    """``cls.from_pretrained(path, ...)`` without weights: the config saved in ``path`` with the
    caller's overrides (e.g. ``add_cross_attention=True``), the caller's ``dtype`` and
    ``attn_implementation``, random weights (:func:`fill_random`), eval mode."""
    from transformers.initialization import no_init_weights

    for key in LOADING_ONLY:
        kwargs.pop(key, None)
    build = {key: kwargs.pop(key) for key in ("dtype", "attn_implementation") if key in kwargs}
    if config is None:
        config, kwargs = cls.config_class.from_pretrained(path, return_unused_kwargs=True,
                                                          **kwargs)
    assert not model_args and not kwargs, f"from_pretrained got unexpected {model_args} {kwargs}"
    with no_init_weights():
        model = cls._from_config(config, **build)
    fill_random(model)
    return model.eval()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Hub ids resolve to folders with the real config and a tokenizer; weights are random."""
    from transformers import PreTrainedModel

    def model_path(name: str, profile: str = "small", download: bool = True):
        assert profile == "full", profile
        assert name in ARCHITECTURES, f"{name!r} is not a model of ARCHITECTURES"
        folder = tmp_path / name.replace("/", "__")
        if not folder.exists():
            make_config, tokenizer = ARCHITECTURES[name]
            make_config().save_pretrained(folder)
            if tokenizer:
                _save_tokenizer(tokenizer, folder)
        return assets.ResolvedModel(name, str(folder), "hub")

    monkeypatch.setattr(assets, "model_path", model_path)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(random_from_pretrained))


def full(question: str) -> profiles.Config:
    return profiles.config(question, "full")


# --------------------------------------------------------------------------- asset names

def test_every_asset_a_profile_names_is_one_the_code_can_load():
    """A typo in a toml fails here: datasets are keys of ``assets.DATASETS``; models are
    packaged (``assets.MODELS``), built at random in code, or hub models with an entry in
    :data:`ARCHITECTURES`, so that the tests below drive them."""
    for profile in profiles.PROFILES:
        datasets, models = assets.assets_of_profile(profile)
        assert set(datasets) <= set(assets.DATASETS), (profile, datasets)
        unknown = set(models) - set(assets.MODELS) - set(ARCHITECTURES)
        assert not unknown, f"profile {profile} names models no test can build: {unknown}"
    _, full_models = assets.assets_of_profile("full")
    assert set(full_models) == set(ARCHITECTURES)  # every full model is driven below


# ------------------------------------------------------------- Adapter: RoBERTa-base on IMDB

def test_adapter_full_roberta_base(hub):
    """RoBERTa-base: IMDB tokenised with head+tail truncation at ``max_length``, the probe's
    pooled features of a full-length review, every method's model with its trainable count
    equal to the notebook's formula, zero-initialised adapters that leave the logits unchanged,
    and one training step (with its evaluation) of the Houlsby adapter and of full fine-tuning."""
    from helpers import encoders, peft, training

    cfg = full(ADAPTER)
    data = encoders.load_imdb("full", 2, 2, 2)
    loaded = encoders.load_encoder(cfg.model, "full")
    config = loaded.model.config
    assert (type(loaded.model).__name__, config.num_hidden_layers, config.hidden_size) == (
        "RobertaModel", 12, 768)
    base = encoders.EncoderClassifier(loaded.model, 2, cfg.pooling, cfg.head_dropout)
    sets = {split: encoders.EncodedTexts(loaded.tokenizer, frame.text.tolist(),
                                         frame.label.tolist(), cfg.max_length, cfg.truncation)
            for split, frame in data.items()}
    assert sets["train"].input_ids.shape == (2, cfg.max_length)
    assert (sets["train"].input_ids[:, 0] == loaded.tokenizer.bos_token_id).all()
    # the probe's features: the encoder reads the longest review, max_length tokens
    longest = int(sets["test"].lengths().argmax())
    feats = encoders.pooled_features(
        base, encoders.loader(torch.utils.data.Subset(sets["test"], [longest]), 1))
    assert feats[0].shape == (1, config.hidden_size)
    encoders.train_probe(torch.nn.Linear(config.hidden_size, 2), feats, feats, 1, cfg.lr_probe)

    specs = [("head", 0)] + [("houlsby", m) for m in cfg.bottlenecks]
    if cfg.pfeiffer:
        specs.append(("pfeiffer", cfg.bottlenecks[0]))
    if cfg.full_finetune:
        specs.append(("full", 0))
    models = {f"{method} m={m}" if m else method: encoders.prepare(
        base, method, m, cfg.train_layernorm, cfg.adapter_activation) for method, m in specs}
    d, n_layers = config.hidden_size, config.num_hidden_layers
    total, head = training.count_parameters(base), training.count_parameters(base.head)
    for (method, m), model in zip(specs, models.values(), strict=True):
        formula = head + (total - head if method == "full" else 0) + (
            peft.encoder_adapter_parameters(d, m, n_layers, method,
                                            (2 * n_layers + 1) * cfg.train_layernorm)
            if method in peft.ADAPTER_CONFIGS else 0)
        assert training.count_parameters(model, trainable_only=True) == formula, method

    # compute on two short reviews, through the same tokenisation and batching
    short = encoders.EncodedTexts(loaded.tokenizer, ["A moving, well acted film.",
                                                     "Dull and far too long."], [1, 0],
                                  cfg.max_length, cfg.truncation)
    batches = encoders.loader(short, 2)
    batch = next(iter(batches))
    with torch.no_grad():  # zero-initialised adapters leave the logits unchanged
        reference = base.eval()(batch["input_ids"], batch["attention_mask"])
        for model in models.values():
            assert_close(model.eval()(batch["input_ids"], batch["attention_mask"]), reference,
                         atol=0.0, rtol=0.0)
    adapter = f"houlsby m={cfg.bottlenecks[0]}"
    memory = encoders.autograd_memory(models[adapter].train(), batch)
    assert memory["activations"] > 0 and memory["grads"] < memory["weights"] / 10
    for name, lr in ((adapter, cfg.lr_adapter), ("full", cfg.lr_full)):
        result = encoders.train_classifier(models[name], batches, batches, 1, lr,
                                           cfg.weight_decay, cfg.warmup_ratio,
                                           cfg.evals_per_epoch, desc=name)
        assert result.steps == 1 and result.eval_steps == [1]
        assert np.isfinite([*result.history.step_losses, result.history.rows[-1]["val_loss"]]).all()


# ------------------------------------------------------------------- Q5: ViT-B/16 on CIFAR-10

@pytest.fixture
def vit_b16(hub):
    """Q5's model and backbone, and one CIFAR-shaped image at the fine-tuning size with its
    label."""
    from helpers import vit

    cfg = full(VIT)
    model = vit.load_vit(cfg.model, "full")
    raw = vit.synthetic_cifar(1, 0)
    pixels = vit.preprocess(raw["x_train"], cfg.finetune_size, cfg.image_mean, cfg.image_std)
    return cfg, model, vit.backbone_of(model), raw["x_train"], pixels, torch.as_tensor(
        raw["y_train"])


def test_q5_full_vit_b16_attention_and_fine_tuning(vit_b16):
    """ViT-B/16 with its ImageNet-1k head: top-5 labels, cached layer inputs whose last layer
    gives the model's own logits, every layer's attention maps, [CLS] maps and rollout (rows
    sum to 1), then one fine-tuning step of the classifier with every layer trainable."""
    from helpers import interpret, training, vit

    cfg, model, backbone, images, pixels, labels = vit_b16
    photo = vit.preprocess(images, cfg.image_size, cfg.image_mean, cfg.image_std)
    assert type(model).__name__ == "ViTForImageClassification" and backbone is model.vit
    n_layers, n_heads = vit.num_heads_of(backbone)
    assert (n_layers, n_heads, backbone.config.patch_size) == (12, 12, 16)
    with torch.no_grad():
        logits = model(pixel_values=photo).logits
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    assert logits.shape == (1, 1000) and len(vit.top_k(logits, names, 5)[0]) == 5

    states = vit.layer_inputs(backbone, photo, batch_size=cfg.batch_size)
    assert len(states) == n_layers and states[-1].shape == (1, 197, 768)
    with torch.no_grad():  # the last layer from its cached input gives the model's logits
        tokens = vit.run_layers(backbone, states[-1], n_layers - 1)
        assert_close(model.classifier(tokens[:, 0]), logits)

    grid = (cfg.image_size // backbone.config.patch_size,) * 2
    attn = interpret.attention_maps(backbone, photo)[:, 0]  # (L, heads, T, T)
    assert attn.shape == (n_layers, n_heads, 197, 197)
    assert interpret.cls_maps(attn, grid).shape == (n_layers, n_heads, *grid)
    for fusion in cfg.head_fusions:
        rollout = interpret.rollout(attn[:, None].double(), fusion, cfg.discard_ratio)[0]
        assert_close(rollout.sum(-1), torch.ones(197, dtype=torch.float64))

    start = n_layers - cfg.trainable_layers  # full: 0, every layer trains on pixels
    clf = vit.ViTClassifier(backbone, 10, start_layer=start)
    trainable = vit.freeze_except_last(clf, cfg.trainable_layers)
    frozen = {id(p) for p in backbone.embeddings.parameters()}
    assert {id(p) for p in trainable} == {id(p) for p in clf.parameters()} - frozen
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = training.fit(clf, [(pixels, labels)],
                           lambda m, b: (F.cross_entropy(m(b[0]), b[1]), len(b[1])),
                           optimizer, 1)
    assert np.isfinite(history.step_losses).all()


def test_q5_full_vit_b16_head_masking(vit_b16):
    """Head masks on ViT-B/16's 12 x 12 heads: a masked evaluation from cached layer inputs
    changes the loss, and gradient importance reaches exactly the heads the loss depends on."""
    from helpers import head_masking as hm
    from helpers import vit

    cfg, model, backbone, _, pixels, labels = vit_b16
    clf = vit.ViTClassifier(backbone, 10).eval()
    wrapped = hm.HeadMaskedModel(clf, backbone)
    assert wrapped.shape == (12, 12)
    states = vit.layer_inputs(backbone, pixels, batch_size=cfg.batch_size)

    def tail(hidden, layer):
        return clf.head(vit.pooled(vit.run_layers(backbone, hidden, layer)))

    evaluator = hm.CachedMaskEvaluator(states, labels, tail, cfg.batch_size)
    mask = torch.ones(wrapped.shape)
    mask[-1, :6] = 0  # heads of the last layer: recomputed from its cached input alone
    hm.evaluate_with_mask(wrapped, mask, evaluator)
    evaluator(wrapped)  # every head back
    masked, unmasked = (row["loss"] for row in evaluator.history)
    assert np.isfinite(masked) and masked != unmasked
    importance = hm.head_importance(
        wrapped, [(states[-1], labels)],
        lambda m, b: F.cross_entropy(tail(b[0], 11), b[1]), wrapped.shape)
    assert importance[:-1].abs().sum() == 0 and importance[-1].abs().sum() > 0
    wrapped.remove()


# --------------------------------------------- captioning: ViT-B/16 in21k + distilgpt2 decoder

def test_captioning_full_vit_in21k_distilgpt2(hub):
    """ViT-B/16 in21k features of an image pooled to the feature grid, GPT-2's own ids as the
    vocabulary, distilgpt2 with cross-attention added in a VisionEncoderDecoderModel, one
    training step and a held-out loss, greedy and beam decoding, and BERTScore with
    RoBERTa-large at the configured layer."""
    from transformers import GPT2Tokenizer

    from helpers import captioning, training, vit
    from helpers.metrics import caption_metrics

    cfg = full(CAPTIONING)
    folder = assets.dataset_dir("flickr8k", "small")  # COCO's layout; COCO is not offline
    rows = captioning.read_captions(folder, "train", 1)
    encoder = vit.backbone_of(vit.load_vit(cfg.encoder_model, "full"))
    assert type(encoder).__name__ == "ViTModel"
    feats, from_cache = captioning.image_features(
        encoder, [r["image"] for r in rows], cfg.image_size, cfg.feature_grid, cfg.image_mean,
        cfg.image_std, batch_size=cfg.feature_batch_size)
    assert feats.shape == (1, 1 + cfg.feature_grid ** 2, 768) and not from_cache

    tokenizer = GPT2Tokenizer.from_pretrained(assets.dataset_dir(cfg.tokenizer_dataset, "full"))
    captions = [r["captions"] for r in rows]
    vocab = captioning.CaptionVocab(tokenizer, [c for caps in captions for c in caps],
                                    compact=cfg.vocab_compact, min_count=cfg.vocab_min_count)
    decoder = captioning.pretrained_decoder(assets.model_path(cfg.decoder_model[0], "full").path)
    model = captioning.build_captioner(encoder, decoder, vocab)
    assert decoder.config.add_cross_attention and len(vocab) == decoder.config.vocab_size
    assert training.count_parameters(model.encoder, trainable_only=True) == 0

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = captioning.caption_batches(feats, captions, vocab, cfg.batch_size, cfg.max_len,
                                         bucket=cfg.length_buckets)
    history = training.fit(model, batches, captioning.caption_loss, optimizer, 1,
                           clip_grad_norm=cfg.clip_grad_norm)
    assert np.isfinite(history.step_losses).all()
    val_loss = training.evaluate_loss(
        model, captioning.heldout_batches(feats, captions, vocab, cfg.max_len),
        captioning.caption_loss)
    assert np.isfinite(val_loss)

    for beams in (1, cfg.num_beams):
        preds = captioning.generate_captions(model, feats, vocab, num_beams=beams,
                                             max_new_tokens=3)
        assert len(preds) == 1 and isinstance(preds[0], str)
    bertscore = assets.model_path(cfg.bertscore_model, "full").path
    scores = caption_metrics(["a girl climbs"], [captions[0][:2]], bertscore,
                             cfg.bertscore_layers)
    assert 0 <= scores["bleu1"] <= 1 and np.isfinite(scores["bertscore_f1"])


# ----------------------------------------------------------- Q3: GPT-2 medium, LoRA, prefixes

def test_q3_full_gpt2_medium_peft(hub):
    """GPT-2 medium with its Conv1D projections as Linear: WikiText-style sequences and the
    zero-shot loss, the hand LoRA on ``c_attn`` equal to peft's (unmerged and merged), then one
    step of peft LoRA at the largest rank and of prefix tuning initialised from real tokens."""
    from helpers import causal_lm, training
    from helpers.peft import LoRALinear, apply_lora

    cfg = full(PEFT)
    texts = ["The tower is 324 metres tall .", "It was built in 1889 ."]
    base, tok, source = causal_lm.load_causal_lm(cfg.model, "full")
    causal_lm.conv1d_to_linear(base)
    base_total = training.count_parameters(base)
    assert (base.config.model_type, base.config.num_hidden_layers, source) == ("gpt2", 24, "hub")
    assert tok.pad_token_id == tok.eos_token_id
    seqs = causal_lm.text_sequences(texts, tok, cfg.seq_len, 2, torch.Generator().manual_seed(0))
    loader = causal_lm.lm_loader(seqs, tok.pad_token_id, cfg.batch_size)
    assert np.isfinite(causal_lm.evaluate_causal_lm(base, loader)["val_loss"])

    r, alpha = cfg.hand_rank, cfg.lora_alpha_ratio * cfg.hand_rank
    ref = causal_lm.peft_lora(copy.deepcopy(base), r, alpha, cfg.lora_targets).eval()
    hand = apply_lora(copy.deepcopy(base), r, alpha, tuple(cfg.lora_targets)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    assert causal_lm.copy_lora_weights(ref, hand) == base.config.num_hidden_layers
    assert causal_lm.lora_module_names(hand) == causal_lm.lora_module_names(ref)
    batch = next(iter(loader))
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        ours = hand(**inputs).logits
        assert_close(ours, ref(**inputs).logits, atol=1e-4, rtol=1e-4)
        for layer in (m for m in hand.modules() if isinstance(m, LoRALinear)):
            layer.merge()
        assert_close(hand(**inputs).logits, ours, atol=1e-4, rtol=1e-4)
    del ref, hand

    prefix_ids = torch.tensor(tok(texts[0], add_special_tokens=False)["input_ids"]
                              [:cfg.prefix_tokens])
    # one step of each peft method (full fine-tuning runs the same finetune on every weight)
    rank = max(cfg.lora_ranks)
    lora = causal_lm.peft_lora(copy.deepcopy(base), rank, cfg.lora_alpha_ratio * rank,
                               cfg.lora_targets)
    prefix = causal_lm.peft_prefix_tuning(base, len(prefix_ids))  # the last use of base
    causal_lm.init_prefix_from_tokens(prefix, prefix_ids)
    for method, model, lr in (("LoRA (peft)", lora, cfg.lora_lr),
                              ("prefix tuning", prefix, cfg.prefix_lr)):
        result = causal_lm.finetune(model, method, loader, loader, lr=lr,
                                    reference_total=base_total)
        assert result.steps == 1 and np.isfinite([result.val_loss, *result.step_losses]).all()


# ------------------------------------------- Q4: DeepSeek-R1-Distill-Qwen-1.5B's architecture

def test_q4_full_r1_distill_qwen_generation(hub):
    """DeepSeek-R1-Distill-Qwen-1.5B's architecture (2 of its 28 layers) in bfloat16 with an
    R1-style chat template: the prompt layout, then a few tokens of every method (chain of
    thought, samples for best-of-N and majority vote, step-wise beam search, self-refine)."""
    from helpers import causal_lm
    from helpers import reasoning as R

    cfg = full(REASONING)
    model, tokenizer, _ = causal_lm.load_causal_lm(cfg.model, "full",
                                                   dtype=getattr(torch, cfg.dtype))
    assert model.dtype == torch.bfloat16 and model.config.hidden_size == 1536
    problems = R.arithmetic_problems(1, 0, R.ARITHMETIC_LEVELS[:2])
    solver = R.Solver(model, tokenizer, "Solve step by step.", (), max_new_tokens=3,
                      temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                      generator=torch.Generator().manual_seed(0))
    prompt = solver.prompt(problems[0].question)
    assert prompt.startswith(R1_BOS + "Solve step by step." + R1_USER)
    assert prompt.endswith(R1_ASSISTANT + "<think>\n")

    cot = R.chain_of_thought(solver, problems)
    samples = R.sample_solutions(solver, problems, 2)
    assert [len(pool) for pool in samples] == [2, 2]
    assert all(c.n_tokens <= 3 for c in [a for a in cot] + [c for p in samples for c in p])
    assert len(R.best_of_n(problems, samples, 2)) == len(R.majority_vote(problems, samples, 2))
    beam = R.stepwise_beam_search(solver, problems, cfg.beam_width, cfg.beam_top_k, 1, 2)
    refined, verdicts = R.self_refine(solver, problems, cot, 1, review_tokens=cfg.review_tokens)
    assert len(beam) == len(refined) == len(verdicts) == 2
    assert all(np.isfinite(c.logprob) for pool in samples for c in pool)
