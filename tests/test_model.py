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


def test_transfer_with_frozen_blocks_to_a_new_dataset_and_class_count(tmp_path, image_folder):
    import shutil

    from vitsearch.train import CHECKPOINT_NAME

    # pre-train on grayscale digits (10 classes), then fine-tune on 3 RGB classes of an image folder
    train(micro_config(epochs=3, aug_strength=0.0, batch_size=32), checkpoint_dir=tmp_path / "pre")
    source = tmp_path / "pre" / CHECKPOINT_NAME
    pretrained = torch.load(source, weights_only=True)["model"]
    three = tmp_path / "three"
    for label in ("class_0", "class_1", "class_2"):
        shutil.copytree(image_folder / label, three / label)
    cfg = micro_config(data=f"imagefolder:{three}", init_from=str(source), freeze_blocks=2, epochs=2,
                       batch_size=8, val_fraction=0.25, aug_strength=0.0)
    train(cfg, checkpoint_dir=tmp_path / "fine")
    tuned = torch.load(tmp_path / "fine" / CHECKPOINT_NAME, weights_only=True)["model"]
    assert tuned["head.weight"].shape == (3, 64)
    frozen = [k for k in tuned if k.startswith(("blocks.0.", "blocks.1.", "pos_embed", "cls_token"))]
    assert frozen and all(torch.equal(tuned[k], pretrained[k]) for k in frozen)  # bit-identical
    assert torch.equal(tuned["patch_embed.proj.weight"], pretrained["patch_embed.proj.weight"].repeat(1, 3, 1, 1))
    moved = [k for k in tuned if k.startswith(("blocks.2.", "blocks.3."))]
    assert all(not torch.equal(tuned[k], pretrained[k]) for k in moved if k.endswith("weight"))
    # the run folder names its checkpoint, as it does for `teacher`
    again = build_model(micro_config(init_from=str(tmp_path / "pre")), 1, 16, 10).state_dict()
    assert all(torch.equal(again[k], pretrained[k]) for k in pretrained)


def test_init_from_a_missing_file_or_an_unreachable_hub_is_a_config_error():
    with pytest.raises(ConfigError, match="no such file"):
        build_model(micro_config(init_from="/nonexistent/ckpt.pt"), 1, 16, 10)
    with pytest.raises(ConfigError, match="give a local file"):
        build_model(micro_config(init_from="timm:vit_tiny_patch16_224.augreg_in21k"), 1, 16, 10)
    with pytest.raises(ConfigError, match="freeze_blocks"):
        micro_config(freeze_blocks=2)
