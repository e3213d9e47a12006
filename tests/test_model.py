"""Model options through the public path: ConvStem and the per-epoch monitors."""

import math

import pytest
import torch
from conftest import micro_config

from vitsearch.errors import ConfigError
from vitsearch.model import build_model
from vitsearch.train import train


def test_conv_stem_keeps_the_token_grid_and_learns():
    patch = build_model(micro_config(), 1, 16, 10)
    conv = build_model(micro_config(stem="conv"), 1, 16, 10)
    strides = [m.stride[0] for m in conv.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 1]  # two stride-2 3x3 convs for patch 4, then the 1x1 projection
    x = torch.randn(2, 1, 16, 16)
    assert conv.forward_features(x).shape == patch.forward_features(x).shape == (2, 17, 64)
    history = train(micro_config(stem="conv", epochs=3, aug_strength=0.0, batch_size=32))["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_acc"] > 0.3


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ConfigError, match="power of two"):
        build_model(micro_config(stem="conv", image_size=18, patch_size=6), 1, 18, 10)


def test_monitors_are_reported_per_epoch_only_when_on():
    keys = {"cls_norm", "attn_entropy_mean", "attn_entropy_min", "mlp_sparsity"}
    on = train(micro_config(monitors=True, epochs=2, data_subset=256))["history"]
    off = train(micro_config(epochs=1, data_subset=256))["history"]
    assert not keys & set(off[0])
    tokens = 17  # 4x4 patches + CLS
    for row in on:
        assert keys <= set(row)
        assert 0 < row["attn_entropy_min"] <= row["attn_entropy_mean"] <= math.log(tokens) + 1e-6
        assert 0 <= row["mlp_sparsity"] <= 1 and row["cls_norm"] > 0
    assert on[0]["cls_norm"] != on[1]["cls_norm"]  # measured on the model as it trains
