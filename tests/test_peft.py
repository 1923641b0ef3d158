"""Hand-written LoRA: B = 0 leaves the model unchanged, merge == unmerged, equals peft's LoRA
with the same A, B, and the trainable counts match r·(in + out) and 18·d·r per block.
Bottleneck adapters: a zero up-projection leaves a BERT/RoBERTa encoder unchanged, only
adapters (and LayerNorms) train, and the counts match layers·(2dm + d + m) + 2d per LayerNorm."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers.peft import (
    AdapterAfter,
    BottleneckAdapter,
    LoRALinear,
    adapter_parameters,
    apply_adapters,
    apply_lora,
    encoder_adapter_parameters,
    encoder_block_lora_parameters,
    encoder_layers,
    lora_parameters,
)
from helpers.training import count_parameters

trainable = partial(count_parameters, trainable_only=True)


def test_zero_b_starts_equal_to_base_and_only_lora_trains():
    base = nn.Linear(8, 5)
    x = torch.randn(3, 8)
    expected = base(x).detach()
    layer = LoRALinear(base, r=2, alpha=4)
    assert_close(layer(x), expected)
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().max() > 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(8) + 1e-7  # kaiming-uniform(a=√5) bound
    assert trainable(layer) == lora_parameters(8, 5, 2)
    assert not base.weight.requires_grad and layer.scaling == 2.0


def test_merge_equals_unmerged():
    layer = LoRALinear(nn.Linear(6, 4), r=3, alpha=6).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    before, weight = layer(x), layer.base.weight.clone()
    assert (before - layer.base(x)).abs().max() > 1e-3  # the update does something
    layer.merge()
    assert_close(layer(x), before)
    assert_close(layer.base.weight, weight + 2 * layer.lora_B @ layer.lora_A)  # alpha / r = 2
    layer.merge()  # merging twice changes nothing
    assert_close(layer(x), before)


def test_equals_peft_library():
    peft = pytest.importorskip("peft")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(7, 5)

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    model = Tiny()
    ours = LoRALinear(nn.Linear(7, 5), r=2, alpha=8)
    ours.base.load_state_dict(model.lin.state_dict())
    ref = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=8, target_modules=["lin"],
                                                     lora_dropout=0.0))
    lora_lin = ref.base_model.model.lin
    with torch.no_grad():
        lora_lin.lora_B["default"].weight.normal_()
        ours.lora_A.copy_(lora_lin.lora_A["default"].weight)
        ours.lora_B.copy_(lora_lin.lora_B["default"].weight)
    x = torch.randn(4, 7)
    assert_close(ours(x), ref(x))
    assert trainable(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)


def test_apply_lora_counts_a_block():
    d, r = 16, 3
    block = nn.ModuleDict({n: nn.Linear(d, d, bias=False) for n in ("q", "k", "v", "o")})
    block["ff1"], block["ff2"] = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
    apply_lora(block, r)
    assert trainable(block) == encoder_block_lora_parameters(d, r) == 18 * d * r


# --------------------------------------------------------------------------- adapters

def _tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=20)
    return BertModel(config).eval()


def test_bottleneck_adapter_starts_as_identity_and_counts():
    adapter = BottleneckAdapter(12, 3)
    h = torch.randn(2, 5, 12)
    assert_close(adapter(h), h)
    assert torch.all(adapter.up.weight == 0) and adapter.down.weight.abs().max() > 0
    assert trainable(adapter) == adapter_parameters(12, 3) == 2 * 12 * 3 + 12 + 3
    with torch.no_grad():
        adapter.up.weight.normal_()
    assert (adapter(h) - h).abs().max() > 1e-3  # trained, it changes the input
    with pytest.raises(ValueError, match="bottleneck"):
        BottleneckAdapter(12, 0)
    with pytest.raises(ValueError, match="activation"):
        BottleneckAdapter(12, 3, activation="swish")


@pytest.mark.parametrize("config, per_layer", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("train_layernorm", [True, False])
def test_apply_adapters_keeps_outputs_and_trains_only_adapters(config, per_layer, train_layernorm):
    model = _tiny_bert()
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    before = model(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    adapters = apply_adapters(model, bottleneck=4, config=config, train_layernorm=train_layernorm)
    assert len(adapters) == 2 * per_layer
    assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state, before,
                 atol=0.0, rtol=0.0)  # zero up-projection: exactly the base model
    n_ln = 2 * 2 + 1 if train_layernorm else 0
    assert trainable(model) == encoder_adapter_parameters(16, 4, 2, config, n_ln)
    assert trainable(model) == 2 * per_layer * (2 * 16 * 4 + 16 + 4) + n_ln * 2 * 16
    for name, p in model.named_parameters():
        intended = ".adapter." in name or (train_layernorm and "LayerNorm" in name)
        assert p.requires_grad == intended, name
    layer = model.encoder.layer[0]
    assert isinstance(layer.output.dropout, AdapterAfter)
    assert isinstance(layer.attention.output.dropout, AdapterAfter) == (config == "houlsby")


def test_adapters_sit_before_the_residual_layernorm_and_get_gradients():
    """A non-zero adapter changes the layer exactly as dense -> adapter -> LN(+residual) says."""
    model = _tiny_bert()
    apply_adapters(model, bottleneck=3, config="pfeiffer")
    layer = model.encoder.layer[0]
    with torch.no_grad():
        layer.output.dropout.adapter.up.weight.normal_()
    x = torch.randn(2, 5, 16)
    inter = torch.randn(2, 5, 32)
    out = layer.output(inter, x)
    manual = layer.output.LayerNorm(layer.output.dropout.adapter(layer.output.dense(inter)) + x)
    assert_close(out, manual)
    ids = torch.randint(0, 50, (2, 6))
    model(input_ids=ids).last_hidden_state.sum().backward()
    assert layer.output.dropout.adapter.down.weight.grad.abs().sum() > 0
    assert model.embeddings.word_embeddings.weight.grad is None


def test_apply_adapters_rejects_bad_input():
    model = _tiny_bert()
    with pytest.raises(ValueError, match="unknown adapter config"):
        apply_adapters(model, 4, config="lora")
    apply_adapters(model, 4)
    with pytest.raises(ValueError, match="already holds adapters"):
        apply_adapters(model, 4)
    with pytest.raises(ValueError, match="no BERT-style layers"):
        encoder_layers(nn.Linear(3, 3))


def test_apply_adapters_on_roberta():
    from transformers import RobertaConfig, RobertaModel

    model = RobertaModel(RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3,
                                       num_attention_heads=2, intermediate_size=32,
                                       max_position_embeddings=24)).eval()
    ids = torch.randint(3, 60, (2, 8))
    before = model(input_ids=ids).last_hidden_state.detach()
    apply_adapters(model, 5, train_layernorm=False)
    assert_close(model(input_ids=ids).last_hidden_state, before, atol=0.0, rtol=0.0)
    assert trainable(model) == encoder_adapter_parameters(16, 5, 3)
