"""helpers.causal_lm on tiny random models: hand LoRA equals peft's LoRA on a whole Llama,
merged equals unmerged, padded labels are ignored, GPT-2's Conv1D becomes an equal Linear,
sequences, cost measurement, fine-tuning, the offline error of a missing model, and a GGUF model
dequantised once into the shared cache (a tiny GGUF written here) loading the same cold and warm."""

import copy

import pytest
import torch
from torch.testing import assert_close

from helpers import causal_lm
from helpers.nb import assets
from helpers.peft import LoRALinear, apply_lora
from helpers.training import count_parameters

TEXTS = [f"the {w} of the {v} is {n} and it was a {w} day ." for w in ("red", "long", "cold")
         for v in ("river", "town", "song", "king") for n in range(5)]


def _tiny_llama(vocab: int = 97):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(causal_lm.tiny_llama_config(vocab, hidden_size=32, num_layers=2,
                                                        num_heads=4, num_kv_heads=2)).eval()


def _batch(vocab: int = 97):
    seqs = [torch.randint(3, vocab, (n,)) for n in (9, 5, 7)]
    return next(iter(causal_lm.lm_loader(seqs, pad_id=0, batch_size=3)))


def _lora_pair(r: int = 4, alpha: float = 8.0):
    """The same tiny Llama with peft's LoRA and with the hand LoRA, sharing A and B (B random)."""
    pytest.importorskip("peft")
    base = _tiny_llama()
    hand = apply_lora(copy.deepcopy(base), r, alpha, ("q_proj", "v_proj"))
    ref = causal_lm.peft_lora(copy.deepcopy(base), r, alpha, ("q_proj", "v_proj"))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert causal_lm.copy_lora_weights(ref, hand) == 4
    return base, hand.eval(), ref.eval()


def test_hand_lora_equals_peft_on_a_llama_and_wraps_exactly_the_targets():
    base, hand, ref = _lora_pair()
    batch = _batch()
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ours, theirs = hand(**kwargs).logits, ref(**kwargs).logits
    assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - base(**kwargs).logits).abs().max() > 1e-3  # the adapters change the output
    names = causal_lm.lora_module_names(hand)
    assert names == causal_lm.lora_module_names(ref)
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2)
                     for p in ("q_proj", "v_proj")]
    # per layer r·(in + out): q 32 -> 32, v 32 -> 16 (2 of 4 heads are key/value heads)
    trainable = [count_parameters(m, trainable_only=True) for m in (hand, ref)]
    assert trainable == [2 * 4 * ((32 + 32) + (32 + 16))] * 2


def test_merged_hand_lora_model_equals_unmerged():
    _, hand, _ = _lora_pair()
    batch = _batch()
    before = hand(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    layers = [m for m in hand.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.merge()
    after = hand(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_zero_b_leaves_the_llama_unchanged():
    base = _tiny_llama()
    hand = apply_lora(copy.deepcopy(base), 4, 8.0, ("q_proj", "v_proj"))
    batch = _batch()
    ids = batch["input_ids"]
    assert_close(hand(input_ids=ids).logits, base(input_ids=ids).logits)


def test_padded_labels_are_minus_100_and_do_not_change_the_loss():
    model = _tiny_llama()
    seqs = [torch.randint(3, 97, (n,)) for n in (9, 5)]
    batch = next(iter(causal_lm.lm_loader(seqs, pad_id=0, batch_size=2)))
    assert (batch["labels"][1, 5:] == -100).all() and (batch["labels"][1, :5] >= 0).all()
    loss, n = causal_lm.causal_lm_loss(model, batch)
    assert n == 8 + 4
    # the same mean over every real next-token prediction, one unpadded sequence at a time
    total = 0.0
    for s in seqs:
        logits = model(input_ids=s[None]).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits, s[1:], reduction="sum").item()
    assert_close(loss.item(), total / n, atol=1e-5, rtol=1e-5)
    metrics = causal_lm.evaluate_causal_lm(model, [batch])
    assert_close(metrics["val_perplexity"], torch.tensor(total / n).exp().item(), rtol=1e-5, atol=0)


def test_sequence_losses_score_each_sequence_alone_and_pool_to_the_validation_loss():
    model = _tiny_llama()
    seqs = [torch.randint(3, 97, (n,)) for n in (9, 5, 12, 7)]
    loader = causal_lm.lm_loader(seqs, pad_id=0, batch_size=3)
    sums, counts = causal_lm.sequence_losses(model, loader)
    with torch.no_grad():
        alone = [torch.nn.functional.cross_entropy(model(input_ids=s[None]).logits[0, :-1],
                                                   s[1:], reduction="sum").item() for s in seqs]
    assert_close(sums, torch.tensor(alone, dtype=torch.float64), atol=1e-4, rtol=1e-5)
    assert counts.tolist() == [8, 4, 11, 6]
    metrics = causal_lm.validation_metrics(model, loader)
    assert_close(metrics["val_loss"], causal_lm.evaluate_causal_lm(model, loader)["val_loss"],
                 atol=1e-5, rtol=1e-5)
    assert metrics["val_loss_se"] > 0 and len(metrics["sequence_loss"]) == 4
    assert causal_lm.paired_loss_difference(metrics, metrics) == (0.0, 0.0)
    shifted = dict(metrics, sequence_loss=[
        x + 2.0 * n for x, n in zip(metrics["sequence_loss"], counts.tolist(), strict=True)])
    diff, se = causal_lm.paired_loss_difference(shifted, metrics)
    assert diff == pytest.approx(2.0) and se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same sequences"):
        causal_lm.paired_loss_difference(metrics, dict(metrics, sequence_tokens=[1, 2, 3, 4]))


def test_padding_on_the_right_leaves_real_tokens_unchanged():
    model = _tiny_llama()
    s = torch.randint(3, 97, (6,))
    batch = next(iter(causal_lm.lm_loader([s, torch.randint(3, 97, (10,))], 0, 2)))
    padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert_close(padded[0, :6], model(input_ids=s[None]).logits[0], atol=1e-5, rtol=1e-5)


def test_conv1d_to_linear_keeps_gpt2_outputs():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2,
                                       n_head=2)).eval()
    ids = torch.randint(0, 50, (2, 7))
    expected = model(input_ids=ids).logits
    causal_lm.conv1d_to_linear(model)
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    apply_lora(model, 2, 4.0, ("c_attn",))
    assert causal_lm.lora_module_names(model) == ["transformer.h.0.attn.c_attn",
                                                  "transformer.h.1.attn.c_attn"]


def test_paragraphs_and_text_sequences():
    raw = " = Title = \n\n first line here . \n = = Section = = \n second one \n"
    assert causal_lm.paragraphs(raw) == ["first line here .", "second one"]
    from helpers.text import train_bpe_tokenizer

    tok = train_bpe_tokenizer(TEXTS, 300)
    seqs = causal_lm.text_sequences(TEXTS, tok, seq_len=6, n=10,
                                    generator=torch.Generator().manual_seed(1))
    again = causal_lm.text_sequences(TEXTS, tok, 6, 10, torch.Generator().manual_seed(1))
    assert len(seqs) == 10 and all(2 <= len(s) <= 6 for s in seqs)
    assert all(torch.equal(a, b) for a, b in zip(seqs, again, strict=True))
    with pytest.raises(ValueError, match="only"):
        causal_lm.text_sequences(TEXTS, tok, 6, len(TEXTS) + 1)


def test_tiny_random_model_saves_and_loads_through_from_pretrained(tmp_path):
    model, tok, source = causal_lm.load_causal_lm(causal_lm.TINY_RANDOM, "smoke",
                                                  tiny_dir=tmp_path / "m", tiny_texts=TEXTS,
                                                  tiny_vocab_size=300)
    assert source == "random" and (tmp_path / "m" / "config.json").exists()
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    again, _, _ = causal_lm.load_causal_lm(str(tmp_path / "m"), "smoke")
    ids = torch.tensor([tok("the red river", add_special_tokens=False)["input_ids"]])
    assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def _write_tiny_llama_gguf(path, hidden=16, layers=2, heads=4, kv_heads=2, ffn=32):
    """A float32 Llama GGUF with a byte-level BPE tokenizer (256 byte symbols, 3 merges)."""
    import numpy as np
    from gguf import GGUFWriter
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(),
              "th", "the", "\u0120the"]
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["t h", "th e", "\u0120 the"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        block = {"attn_norm": (hidden,), "ffn_norm": (hidden,), "attn_q": (hidden, hidden),
                 "attn_k": (kv, hidden), "attn_v": (kv, hidden), "attn_output": (hidden, hidden),
                 "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
        shapes |= {f"blk.{i}.{part}.weight": shape for part, shape in block.items()}
    for name, shape in shapes.items():
        writer.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_model_is_dequantised_once_and_a_warm_load_is_identical(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "model_path", lambda name, profile: assets.ResolvedModel(
        name, str(tmp_path), "package", gguf_file="tiny.gguf"))
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    direct_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    folder = causal_lm.dequantised_cache_dir(tmp_path, "tiny.gguf", torch.float32)
    assert folder.is_relative_to(tmp_path / "cache") and not folder.exists()
    cold, cold_tok, source = causal_lm.load_causal_lm("tiny-gguf", "small")
    assert source == "package (GGUF, dequantised)" and (folder / "config.json").exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial entry left
    mtime = (folder / "config.json").stat().st_mtime_ns
    warm, warm_tok, _ = causal_lm.load_causal_lm("tiny-gguf", "small")
    assert (folder / "config.json").stat().st_mtime_ns == mtime  # read, not rewritten
    assert causal_lm.dequantised_cache_dir(tmp_path, "tiny.gguf", torch.bfloat16) != folder
    text = "the thermos <|im_end|> the"
    ids = torch.tensor([direct_tok(text)["input_ids"]])
    for model, tok in ((cold, cold_tok), (warm, warm_tok)):
        assert tok(text)["input_ids"] == direct_tok(text)["input_ids"]
        assert tok.get_vocab() == direct_tok.get_vocab()
        for name, value in direct.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)


def test_missing_model_offline_fails_with_one_asset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setattr(assets, "_online", False)
    with pytest.raises(assets.AssetError, match="gpt2-medium"):
        causal_lm.load_causal_lm("openai-community/gpt2-medium", "full")


def test_finetune_lowers_the_loss_and_counts_parameters():
    pytest.importorskip("peft")
    model = _tiny_llama()
    torch.manual_seed(0)
    seqs = [torch.randint(3, 20, (12,)) for _ in range(8)]  # a small vocabulary to learn
    train = causal_lm.lm_loader(seqs, 0, 4)
    zero = causal_lm.evaluate_causal_lm(model, train)["val_loss"]
    lora = apply_lora(copy.deepcopy(model), 4, 8.0, ("q_proj", "v_proj"))
    res = causal_lm.finetune(lora, "lora", train, train, lr=2e-2, epochs=5, rank=4)
    assert res.val_loss < zero - 0.1 and res.steps == 10 and len(res.step_losses) == 10
    assert res.trainable == count_parameters(lora, trainable_only=True)
    assert res.total == count_parameters(model) + res.trainable
    assert res.s_per_step > 0 and 0 < res.trainable_pct < 100
    assert res.val_loss_se > 0 and len(res.sequence_loss) == len(res.sequence_tokens) == 8
    prefix = causal_lm.peft_prefix_tuning(copy.deepcopy(model), num_virtual_tokens=3)
    total = count_parameters(model)
    res = causal_lm.finetune(prefix, "prefix", train, train, lr=3e-2, epochs=5,
                             reference_total=total)
    # virtual tokens x layers x (key, value) x key/value width
    assert res.total == total and res.trainable == 3 * 2 * 2 * 16
    assert res.val_loss < zero


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_tuning_forward_and_backward_raise_no_deprecation(family):
    """peft hands the base model its prefix as ``past_key_values=``; transformers 5 warns about
    that name (FutureWarning), so the prefix must reach the model as ``cache=``."""
    pytest.importorskip("peft")
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = _tiny_llama() if family == "llama" else GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=97, n_positions=32, bos_token_id=1,
        eos_token_id=2))
    prefix = causal_lm.peft_prefix_tuning(base, num_virtual_tokens=3)
    x = torch.randint(3, 97, (2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = prefix(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        loss.backward()
    assert prefix.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0


def test_prefix_from_real_tokens_equals_reading_them_first():
    pytest.importorskip("peft")
    base = _tiny_llama()
    prefix = causal_lm.peft_prefix_tuning(copy.deepcopy(base), num_virtual_tokens=4).eval()
    words, x = torch.randint(3, 97, (4,)), torch.randint(3, 97, (2, 6))
    causal_lm.init_prefix_from_tokens(prefix, words)
    with torch.no_grad():
        ours = prefix(input_ids=x, attention_mask=torch.ones_like(x)).logits
        reference = base(input_ids=torch.cat([words.expand(2, 4), x], dim=1)).logits[:, 4:]
    assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need 4"):
        causal_lm.init_prefix_from_tokens(prefix, words[:3])
