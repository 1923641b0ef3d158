"""Hand-written LoRA: B = 0 leaves the model unchanged, merge == unmerged, equals peft's LoRA
with the same A, B, and the trainable counts match r·(in + out) and 18·d·r per block."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers.peft import (
    LoRALinear,
    apply_lora,
    count_trainable,
    encoder_block_lora_parameters,
    lora_parameters,
)


def test_zero_b_starts_equal_to_base_and_only_lora_trains():
    base = nn.Linear(8, 5)
    x = torch.randn(3, 8)
    expected = base(x).detach()
    layer = LoRALinear(base, r=2, alpha=4)
    assert_close(layer(x), expected)
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().max() > 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(8) + 1e-7  # kaiming-uniform(a=√5) bound
    assert count_trainable(layer) == lora_parameters(8, 5, 2)
    assert not base.weight.requires_grad and layer.scaling == 2.0


def test_merge_equals_unmerged_and_unmerge_restores():
    layer = LoRALinear(nn.Linear(6, 4), r=3, alpha=6).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    before, weight = layer(x), layer.base.weight.clone()
    assert (before - layer.base(x)).abs().max() > 1e-3  # the update does something
    layer.merge()
    assert_close(layer(x), before)
    layer.unmerge()
    assert_close(layer.base.weight, weight)
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
    assert count_trainable(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)


def test_apply_lora_counts_a_block():
    d, r = 16, 3
    block = nn.ModuleDict({n: nn.Linear(d, d, bias=False) for n in ("q", "k", "v", "o")})
    block["ff1"], block["ff2"] = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
    apply_lora(block, r)
    assert count_trainable(block) == encoder_block_lora_parameters(d, r) == 18 * d * r
