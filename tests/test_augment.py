"""aug_strength: a monotone ladder that really changes the batches; validation is never augmented."""

import torch
from conftest import micro_config

from vitsearch.augment import BatchAugment, normalize, plan
from vitsearch.data import load_data


def test_ladder_is_monotone_and_spans_none_to_strong():
    plans = [plan(s / 20) for s in range(21)]
    for a, b in zip(plans, plans[1:]):
        assert b.randaug_magnitude >= a.randaug_magnitude and b.mixup_alpha >= a.mixup_alpha
        assert b.erasing_prob >= a.erasing_prob and b.randaug_layers >= a.randaug_layers
    assert plans[0].rung == "none" and plans[0].randaug_layers == 0 and plans[0].mixup_alpha == 0
    assert plans[-1].rung == "strong2" and plans[-1].randaug_magnitude == 20 and plans[-1].mixup_alpha == 0.8
    assert plans[-1].cutmix_alpha == 1.0 and plans[-1].erasing_prob == 0.25


def test_strength_zero_is_identity_and_one_changes_images_and_targets():
    data = load_data(micro_config())
    x, y = data.train_x[:32], data.train_y[:32]
    torch.manual_seed(0)
    off_x, off_y = BatchAugment(0.0, 10, 0.1)(x, y)
    assert torch.equal(off_x, normalize(x)) and torch.equal(off_y, y)
    torch.manual_seed(0)
    on_x, on_y = BatchAugment(1.0, 10, 0.1)(x, y)
    assert on_x.shape == off_x.shape
    assert (on_x - off_x).abs().mean() > 0.1
    assert on_y.shape == (32, 10) and torch.allclose(on_y.sum(1), torch.ones(32))  # soft Mixup/CutMix targets
    assert (on_y.max(1).values < 0.95).any()


def test_odd_batch_with_mixup():
    data = load_data(micro_config())
    x, y = BatchAugment(1.0, 10, 0.1)(data.train_x[:7], data.train_y[:7])
    assert x.shape[0] == 7 and y.shape == (7, 10)
