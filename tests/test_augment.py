"""aug_strength: a monotone ladder that really changes the batches; validation is never augmented."""

import functools

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


def test_per_image_randaugment_gives_each_image_its_own_draw_in_few_calls():
    """Batches of > 92 images: RandAugment drawn per image (as RandAugment is defined), applied with one call of
    torchvision's op per (op, sign) drawn; each image comes out as its own two ops would make it."""
    from vitsearch.augment import randaugment_per_image

    images = load_data(micro_config(image_size=16)).train_x[:256]
    augment = BatchAugment(1.0, 10, 0.1)
    randaug = augment.randaug
    calls = []
    apply = randaug._apply_image_or_video_transform

    def counted(image, *args, **kwargs):
        calls.append(len(image))
        return apply(image, *args, **kwargs)

    randaug._apply_image_or_video_transform = counted
    torch.manual_seed(0)
    out = randaugment_per_image(randaug, images)
    randaug._apply_image_or_video_transform = apply
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert sum(calls) == 2 * 256 and len(calls) <= 2 * 23  # every image twice, in <= 23 calls per layer

    torch.manual_seed(0)  # the same draws, replayed image by image
    names = list(randaug._AUGMENTATION_SPACE)
    draws = [(torch.randint(len(names), (256,)), torch.rand(256) <= 0.5) for _ in range(2)]
    assert len(draws[0][0].unique()) >= 10  # images got different ops
    for i in (0, 1, 17, 100, 255):
        expected = images[i:i + 1]
        for ops, negative in draws:
            fn, signed = randaug._AUGMENTATION_SPACE[names[ops[i]]]
            magnitudes = fn(randaug.num_magnitude_bins, 16, 16)
            m = float(magnitudes[randaug.magnitude]) if magnitudes is not None else 0.0
            m = -m if signed and magnitudes is not None and negative[i] else m
            expected = apply(expected, names[ops[i]], m, interpolation=randaug.interpolation, fill=randaug._fill)
        assert torch.equal(out[i:i + 1], expected)

    calls.clear()  # through the batch augmentation: 256 images take this path, 32 the groups of 4
    randaug._apply_image_or_video_transform = counted
    labels = load_data(micro_config(image_size=16)).train_y[:256]
    x, y = augment(images, labels)
    assert x.shape == (256, 1, 16, 16) and y.shape == (256, 10) and len(calls) <= 2 * 23
    calls.clear()
    augment(images[:32], labels[:32])
    assert calls == [4] * 16  # 8 groups x 2 layers


def test_small_batches_get_torchvisions_randaugment_per_group_of_four_bit_for_bit():
    """The group path calls torchvision's ops directly: the same images and the same random stream as
    calling torchvision's RandAugment on each group of 4, at several strengths, for 1 and 3 channels."""
    from vitsearch.augment import randaugment_groups

    gray = load_data(micro_config(image_size=16)).train_x[:30]  # 7 groups of 4 and one of 2
    colour = torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8)
    for strength in (0.2, 0.5, 1.0):
        for images in (gray, colour):
            randaug = BatchAugment(strength, 10, 0.1).randaug
            torch.manual_seed(3)
            expected = torch.cat([randaug(group) for group in images.split(4)])
            next_draws = torch.rand(8)
            torch.manual_seed(3)
            got = randaugment_groups(randaug, images, {})
            assert torch.equal(got, expected), strength
            assert torch.equal(torch.rand(8), next_draws)  # the same draws, no more, no fewer
            assert not torch.equal(got, images)


def _counted(apply, calls, image, op, *args, **kwargs):
    calls.append(op)
    return apply(image, op, *args, **kwargs)


def test_batched_randaugment_is_torchvisions_per_image_randaugment_bit_for_bit():
    """The per-image path (`randaugment_batched`: one grid_sample for all geometric ops, one blend per colour op)
    gives the images of torchvision's ops with the same per-image draws, here on the CPU bit for bit, and
    calls torchvision only for the 4 ops without a sign (posterize, solarize, autocontrast, equalize)."""
    from vitsearch.augment import randaugment_batched, randaugment_per_image

    gray = load_data(micro_config(image_size=16)).train_x[:256]
    colour = torch.randint(0, 256, (130, 3, 20, 20), dtype=torch.uint8)
    for strength in (0.2, 0.5, 1.0):
        for images in (gray, colour):
            randaug = BatchAugment(strength, 10, 0.1).randaug
            torch.manual_seed(7)
            expected = randaugment_per_image(randaug, images)
            next_draws = torch.rand(8)
            calls = []
            randaug._apply_image_or_video_transform = functools.partial(
                _counted, randaug._apply_image_or_video_transform, calls)
            torch.manual_seed(7)
            got = randaugment_batched(randaug, images, {})
            assert torch.equal(got, expected), (strength, images.shape)
            assert torch.equal(torch.rand(8), next_draws)  # the same draws, no more, no fewer
            assert not torch.equal(got, images)
            assert set(calls) <= {"Posterize", "Solarize", "AutoContrast", "Equalize"} and len(calls) <= 8


def test_batched_erasing_draws_timms_rectangles_with_normal_noise():
    """erase_batched draws as timm's RandomErasing does: an image erased with probability p, one rectangle
    whose area is 2-33 % of the image and aspect 0.3-3.3, inside the image, filled with N(0, 1) noise."""
    from vitsearch.augment import erase_batched

    erasing = BatchAugment(1.0, 10, 0.1).erasing
    torch.manual_seed(1)
    x = torch.full((4000, 3, 24, 24), 7.0)
    got = erase_batched(erasing, x.clone())
    changed = got != 7.0
    assert torch.equal(changed, changed[:, :1].expand_as(changed))  # every channel of the same pixels
    per_image = changed[:, 0]
    erased = per_image.flatten(1).any(1)
    assert abs(erased.float().mean() - erasing.probability) < 0.03
    for image in per_image[erased][:300]:
        rows, cols = image.any(1).nonzero().squeeze(1), image.any(0).nonzero().squeeze(1)
        h, w = len(rows), len(cols)
        assert image.sum() == h * w and rows[-1] - rows[0] == h - 1 and cols[-1] - cols[0] == w - 1  # a rectangle
        assert 0.015 * 24 * 24 <= h * w <= 0.36 * 24 * 24 and 0.2 <= h / w <= 4.5
    noise = got[changed]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
    torch.manual_seed(1)
    assert torch.equal(erase_batched(erasing, x.clone()), got)  # seeded: the same


def test_batched_augmentation_is_the_cpu_paths_augmentation():
    """BatchAugment as on a GPU (forced here with `batched = True`) and as on a CPU by default (`None`:
    RandAugment's per-image draws applied by randaugment_batched): at a strength without erasing, the
    same images and targets as torchvision's calls per (op, sign) (`False`); at full strength, erased and
    mixed batches."""
    import random

    import numpy as np

    data = load_data(micro_config(image_size=16))
    images, labels = data.train_x[:128], data.train_y[:128]
    results = []
    for batched in (False, None, True):
        augment = BatchAugment(2 / 6, 10, 0.1)  # RandAugment magnitude 10, Mixup/CutMix, no erasing
        assert augment.erasing is None and augment.mixup is not None
        augment.batched = batched  # 128 images: per-image draws by default on a CPU too
        torch.manual_seed(0), random.seed(0), np.random.seed(0)
        results.append(augment(images, labels))
    for x, y in results[1:]:
        assert torch.equal(x, results[0][0]) and torch.equal(y, results[0][1])
    assert not torch.equal(results[0][0], normalize(images))
    augment = BatchAugment(1.0, 10, 0.1)
    augment.batched = True
    x, y = augment(images, labels)
    assert x.shape == (128, 1, 16, 16) and torch.allclose(y.sum(1), torch.ones(128))
    assert (x - normalize(images)).abs().mean() > 0.1 and (x.flatten(1).amax(1) > 1.0).any()  # noise > 1
