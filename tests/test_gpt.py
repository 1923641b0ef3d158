"""helpers.gpt against Hugging Face's GPT2LMHeadModel with copied weights; generation,
tokenizer, datasets and the sentiment judge."""

import math

import pytest
import torch
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from helpers.causal_lm import causal_lm_loss, evaluate_causal_lm
from helpers.generation import filter_logits
from helpers.gpt import GPT2, GPTConfig
from helpers.metrics import distinct_n
from helpers.text import (
    ConditionedTextDataset,
    LengthBucketSampler,
    controllability,
    pad_collate,
    read_labelled_csv,
    train_bpe_tokenizer,
    train_sentiment_judge,
)

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=3, n_embd=24, dropout=0.0)


def _hf_twin(ours: GPT2) -> GPT2LMHeadModel:
    """An HF GPT-2 with our weights (HF's Conv1D stores weights transposed)."""
    c = ours.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size,
                                    n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
                                    resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                    activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                    tie_word_embeddings=True, attn_implementation="eager"))
    state = {}
    for name, value in ours.state_dict().items():
        key = name if name.startswith("lm_head") else f"transformer.{name}"
        transposed = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        state[key] = value.t() if transposed else value
    hf.load_state_dict(state, strict=False)
    return hf.eval()


def test_gpt2_matches_huggingface_logits_and_loss():
    torch.manual_seed(0)
    ours = GPT2(CFG).eval()
    hf = _hf_twin(ours)
    ids = torch.randint(0, 50, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, 10:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    out = ours(ids, mask, labels)
    ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
    valid = mask.bool()
    assert_close(out["logits"][valid], ref.logits[valid], atol=1e-5, rtol=1e-5)
    assert_close(out["loss"], ref.loss, atol=1e-5, rtol=1e-5)
    # the one causal-LM loss of helpers.causal_lm serves both (same call, same interface)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    (loss, n), (ref_loss, ref_n) = causal_lm_loss(ours, batch), causal_lm_loss(hf, batch)
    assert n == ref_n == int(mask[:, 1:].sum())
    assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_gpt2_structure_init_and_tied_head():
    model = GPT2(CFG)
    assert model.lm_head.weight is model.wte.weight
    names = {n for n, _ in model.named_parameters()}
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.0.mlp.c_fc.weight",
            "ln_f.weight"} <= names
    assert not model.lm_head.bias if hasattr(model.lm_head, "bias") else True
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert model.h[0].attn.c_proj.weight.std().item() == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causality_future_tokens_do_not_change_the_past():
    model = GPT2(CFG).eval()
    ids = torch.randint(0, 50, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    assert_close(model(ids)["logits"][:, :8], model(changed)["logits"][:, :8])


def test_generate_greedy_matches_argmax_and_stops_at_eos():
    model = GPT2(CFG).eval()
    start = torch.tensor([[1, 2], [3, 4]])
    out = model.generate(start, max_length=8, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :2], start)
    step = model(out[:, :5])["logits"][:, -1].argmax(-1)
    assert torch.equal(out[:, 5], step)
    eos = int(out[0, 2])
    stopped = model.generate(start[:1], max_length=8, temperature=0, eos_token_id=eos)
    assert stopped.shape[1] == 3
    g = torch.Generator().manual_seed(0)
    a = model.generate(start, 10, temperature=1.0, top_p=0.9, generator=g)
    b = model.generate(start, 10, temperature=1.0, top_p=0.9,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_kv_cache_gives_the_logits_of_a_full_pass_and_the_same_generations():
    torch.manual_seed(0)
    model = GPT2(CFG).eval()
    ids = torch.randint(0, 50, (2, 10))
    cache = model.new_cache()
    pieces = [model(ids[:, :6], cache=cache)["logits"]]
    pieces += [model(ids[:, t:t + 1], cache=cache)["logits"] for t in range(6, 10)]
    assert_close(torch.cat(pieces, dim=1), model(ids)["logits"], atol=1e-5, rtol=1e-5)
    assert cache[0][0].shape == (2, CFG.n_head, 10, CFG.n_embd // CFG.n_head)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(2, 7, dtype=torch.long), cache=cache)  # 10 cached + 7 > 16
    start = torch.tensor([[1, 2], [3, 4]])
    for max_length in (12, 20):  # 20 > block_size: the context is cropped and recomputed
        kwargs = {"temperature": 1.0, "top_p": 0.9}
        cached = model.generate(start, max_length, generator=torch.Generator().manual_seed(1),
                                **kwargs)
        plain = model.generate(start, max_length, generator=torch.Generator().manual_seed(1),
                               use_cache=False, **kwargs)
        assert torch.equal(cached, plain) and cached.shape == (2, max_length)


def test_classifier_free_guidance_combines_the_two_passes():
    torch.manual_seed(0)
    model = GPT2(CFG).eval()
    cond, null = torch.tensor([[1], [2]]), torch.tensor([[3], [3]])
    guided = model.generate(cond, 6, temperature=0, unconditional_ids=null, guidance=2.5)
    c, u = model(cond)["logits"][:, -1], model(null)["logits"][:, -1]
    assert torch.equal(guided[:, 1], (u + 2.5 * (c - u)).argmax(-1))  # the first guided step
    assert torch.equal(guided[:, 0:1], cond) and guided.shape == (2, 6)
    # γ = 1, or the same prompt as its own unconditional, is plain sampling
    plain = model.generate(cond, 6, generator=torch.Generator().manual_seed(2))
    for kwargs in ({"unconditional_ids": null, "guidance": 1.0},
                   {"unconditional_ids": cond, "guidance": 3.0}):
        again = model.generate(cond, 6, generator=torch.Generator().manual_seed(2), **kwargs)
        assert torch.equal(again, plain)
    with pytest.raises(ValueError, match="shape"):
        model.generate(cond, 6, unconditional_ids=null[:1], guidance=2.0)


@pytest.mark.parametrize("top_k, top_p", [(5, None), (None, 0.8), (3, 0.5), (None, 0.999)])
def test_filter_logits_matches_transformers_warpers(top_k, top_p):
    logits = torch.randn(4, 40)
    ours = filter_logits(logits, top_k, top_p)
    ref = logits.clone()
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p:
        ref = TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert_close(ours[~torch.isinf(ours)], logits[~torch.isinf(ours)])


def test_tokenizer_dataset_collate_and_loss_mask():
    texts = ["غذا خیلی خوب بود", "خیلی بد و سرد بود", "عالی بود ممنون"] * 5
    tok = train_bpe_tokenizer(texts, vocab_size=300,
                              special_tokens=["<pad>", "<bos>", "<eos>", "<POS>", "<NEG>"])
    assert tok.pad_token_id == 0 and tok.decode(tok("غذا خوب")["input_ids"]) == "غذا خوب"
    data = ConditionedTextDataset(texts[:3], [1, 0, 1], tok, {1: "<POS>", 0: "<NEG>"}, 6)
    assert data[0][0].item() == tok.convert_tokens_to_ids("<POS>")
    assert data[1][0].item() == tok.convert_tokens_to_ids("<NEG>")
    assert all(len(x) <= 6 and x[-1].item() == tok.convert_tokens_to_ids("<eos>") for x in data)
    batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    model = GPT2(GPTConfig(vocab_size=len(tok), block_size=8, n_layer=1, n_head=2, n_embd=8,
                           dropout=0.0))
    loss, n = causal_lm_loss(model, batch)
    assert n == 2 and torch.isfinite(loss)
    metrics = evaluate_causal_lm(model, [batch])
    assert metrics["val_perplexity"] == pytest.approx(torch.exp(loss).item(), rel=1e-4)


def test_read_labelled_csv_errors(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("text,label\na,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_labelled_csv(bad, "comment")
    bad.write_text("comment,label\na,2\n")
    with pytest.raises(ValueError, match="0/1"):
        read_labelled_csv(bad, "comment")


def test_judge_and_distinct_n():
    texts = ["خیلی خوب بود", "عالی و خوشمزه", "خوب و گرم", "بد بود", "خیلی بد و سرد", "افتضاح"] * 4
    labels = [1, 1, 1, 0, 0, 0] * 4
    judge = train_sentiment_judge(texts, labels)
    assert (judge.predict(texts) == labels).all()
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n([""], 2) == 0.0


def test_controllability_report():
    texts = ["خیلی خوب بود", "عالی و خوشمزه", "خوب و گرم", "بد بود", "خیلی بد و سرد", "افتضاح"] * 4
    judge = train_sentiment_judge(texts, [1, 1, 1, 0, 0, 0] * 4)
    report = controllability({1: ["خیلی خوب بود", "بد بود"], 0: ["افتضاح", "بد بود"]}, judge)
    assert report["control_1"] == 0.5 and report["control_0"] == 1.0
    assert report["mean_words"] == pytest.approx((3 + 2 + 1 + 2) / 4)
    assert 0 < report["distinct_2"] <= 1


def test_gpt2_notebook_at_smoke(smoke_run):
    result = smoke_run("sharif-1404-hw3/Q2_gpt2_from_scratch.ipynb")
    assert result.status == "ok", result.error
    m = result.metrics
    assert m["val_loss_last_epoch"] < math.log(600)  # better than uniform over the vocabulary
    assert 1.0 < m["val_perplexity"] < 600
    assert 0.6 < m["judge_test_accuracy"] <= 1.0
    for key in ("control_accuracy_positive", "control_accuracy_negative", "distinct_2",
                "unconditional_positive_share", "distinct_2_real"):
        assert 0.0 <= m[key] <= 1.0
    assert 0.5 < m["val_bits_per_char"] < 8  # bytes of Persian text: at most ~8 bits each
    assert 0 <= m["shown_positive_judged_negative"] <= 10


def test_length_bucket_sampler_covers_everything_once_and_groups_lengths():
    lengths = torch.randint(1, 100, (1000,)).tolist()
    sampler = LengthBucketSampler(lengths, 32, torch.Generator().manual_seed(0), pool_batches=8)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                        for b in [list(range(k, min(k + 32, 1000))) for k in range(0, 1000, 32)])
    assert spread < random_spread / 3
    again = list(LengthBucketSampler(lengths, 32, torch.Generator().manual_seed(0), pool_batches=8))
    assert again == batches
    fixed = list(LengthBucketSampler(lengths, 32, None, pool_batches=8))  # no shuffling at all
    assert fixed == list(LengthBucketSampler(lengths, 32, None, pool_batches=8))
    pool = 32 * 8
    assert [i for b in fixed for i in b] == [i for k in range(0, 1000, pool) for i in sorted(
        range(k, min(k + pool, 1000)), key=lambda i: lengths[i])]
