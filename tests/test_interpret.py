"""Attention extraction and rollout (helpers.interpret)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import interpret, plotting


def _random_attention(layers=3, batch=2, heads=4, tokens=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, batch, heads, tokens, tokens, generator=g,
                      dtype=torch.float64).softmax(dim=-1)


def _hand_rollout(attn: np.ndarray, fusion: str, discard: float) -> np.ndarray:
    """Loops over images and layers, numpy only."""
    layers, batch, _, tokens, _ = attn.shape
    out = np.zeros((batch, tokens, tokens))
    for b in range(batch):
        r = np.eye(tokens)
        for layer in range(layers):
            w = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](attn[layer, b], axis=0)
            if discard > 0:
                flat = w.flatten()
                k = int(flat.size * discard)
                order = [i for i in np.argsort(flat, kind="stable") if i != 0][:k]
                flat[order] = 0
                w = flat.reshape(tokens, tokens)
            a = 0.5 * w + 0.5 * np.eye(tokens)
            a = a / a.sum(axis=1, keepdims=True)
            r = a @ r
        out[b] = r
    return out


@pytest.mark.parametrize("fusion", interpret.HEAD_FUSIONS)
@pytest.mark.parametrize("discard", [0.0, 0.3])
def test_rollout_matches_hand_computation(fusion, discard):
    attn = _random_attention()
    got = interpret.rollout(attn, head_fusion=fusion, discard_ratio=discard)
    want = torch.from_numpy(_hand_rollout(attn.numpy(), fusion, discard))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_rollout_of_one_layer_identity_attention_is_identity():
    attn = torch.eye(4).expand(1, 1, 2, 4, 4).clone()
    torch.testing.assert_close(interpret.rollout(attn), torch.eye(4)[None])


def test_rollout_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="head_fusion"):
        interpret.rollout(_random_attention(), head_fusion="median")


def test_cls_maps_takes_the_cls_row():
    attn = _random_attention(tokens=1 + 6)
    maps = interpret.cls_maps(attn, (2, 3))
    assert maps.shape == (3, 2, 4, 2, 3)
    torch.testing.assert_close(maps[1, 0, 2].flatten(), attn[1, 0, 2, 0, 1:])


def test_attention_maps_match_a_manual_softmax(tiny_vit, vit_pixels):
    x = vit_pixels()
    attn = interpret.attention_maps(tiny_vit, x)
    assert attn.shape == (2, 3, 2, 5, 5)
    with torch.no_grad():
        h = tiny_vit.encoder.layer[0].norm1(tiny_vit.embeddings(x))
        a = tiny_vit.encoder.layer[0].attention
        q = a.q_proj(h).view(3, 5, 2, 8).transpose(1, 2)
        k = a.k_proj(h).view(3, 5, 2, 8).transpose(1, 2)
        want = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
    torch.testing.assert_close(attn[0], want)


def test_discard_keeps_cls_to_cls():
    w = torch.full((1, 3, 3), 0.5)
    w[0, 0, 0] = 0.0  # the smallest entry, but never discarded
    out = interpret.discard_lowest(w, 0.5)
    assert (out == 0).sum() == 1 + 4  # the original zero + 4 discarded


def test_plot_map_grids_splits_rows_evenly_and_keeps_every_map():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    rows = [f"layer {i}" for i in range(10)]
    figures = interpret.plot_map_grids(np.zeros((8, 8, 3)), maps, rows, ["a", "b", "c"],
                                       title="maps", rows_per_figure=4)
    assert [len(f.axes) // 3 for f in figures] == [4, 3, 3]
    assert [f.get_suptitle() for f in figures] == [
        "maps, layer 0 to layer 3", "maps, layer 4 to layer 6", "maps, layer 7 to layer 9"]
    assert [f.axes[0].get_ylabel() for f in figures] == ["layer 0", "layer 4", "layer 7"]
    wide = interpret.plot_map_grid(np.zeros((8, 8, 3)), torch.rand(2, 12, 4, 4), ["r0", "r1"],
                                   [f"head {h}" for h in range(12)])
    assert wide.get_size_inches()[0] <= plotting.PAGE_WIDTH_INCHES + 1e-9  # prints at 1:1
    plt.close("all")


@pytest.mark.parametrize("fusion", interpret.HEAD_FUSIONS)
def test_rollout_per_layer_is_the_rollout_of_each_prefix(fusion):
    attn = _random_attention(layers=4)
    steps = interpret.rollout_per_layer(attn, fusion, 0.3)
    assert steps.shape == (4, 2, 5, 5)
    for layer in range(4):
        want = torch.from_numpy(_hand_rollout(attn[:layer + 1].numpy(), fusion, 0.3))
        torch.testing.assert_close(steps[layer], want, rtol=1e-10, atol=1e-12)


def test_concentration_measures_of_uniform_and_point_rows():
    uniform, point = torch.full((20,), 0.05), torch.zeros(20)
    point[3] = 2.0  # not normalised: both measures renormalise
    torch.testing.assert_close(interpret.top_share(torch.stack([uniform, point])),
                               torch.tensor([0.1, 1.0]))
    torch.testing.assert_close(interpret.entropy_bits(torch.stack([uniform, point])),
                               torch.tensor([np.log2(20), 0.0], dtype=torch.float32))


def test_plot_map_strip_titles_each_map_and_hides_empty_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = torch.rand(8, 3, 3, generator=torch.Generator().manual_seed(0))
    fig = interpret.plot_map_strip(np.zeros((6, 6, 3)), maps, [f"after {i}" for i in range(8)],
                                   per_row=5)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 10 and titled == [f"after {i}" for i in range(8)]
    assert sum(bool(ax.images) for ax in fig.axes) == 8
    assert fig.get_size_inches()[0] <= plotting.PAGE_WIDTH_INCHES + 1e-9
    plt.close(fig)
