"""`aug_strength` in [0, 1] -> a concrete augmentation, after AugReg's ladder (Steiner et al. 2021).

AugReg varies RandAugment (2 layers, magnitude m) and Mixup alpha together; DeiT adds CutMix (alpha
1.0 beside Mixup 0.8) and random erasing 0.25. `aug_strength` walks that ladder; between two rungs
every number is interpolated linearly, so more strength never means less augmentation.

| strength | rung | RandAugment layers, magnitude | Mixup alpha | CutMix alpha | erasing p |
|---|---|---|---|---|---|
| 0     | none    | off  | 0   | 0     | 0    |
| 1/6   | light1  | 2, 0  | 0   | 0     | 0    |
| 2/6   | light2  | 2, 10 | 0.2 | 0.25  | 0    |
| 3/6   | medium1 | 2, 15 | 0.2 | 0.25  | 0.1  |
| 4/6   | medium2 | 2, 15 | 0.5 | 0.625 | 0.15 |
| 5/6   | strong1 | 2, 20 | 0.5 | 0.625 | 0.2  |
| 1     | strong2 | 2, 20 | 0.8 | 1.0   | 0.25 |

Magnitudes are on a 0..20 scale (torchvision's RandAugment with 21 bins: 20 = its full range, e.g.
30 degrees rotation). CutMix alpha is 1.25 x Mixup alpha (DeiT's 1.0 : 0.8); when both are on, each
batch uses one of them with probability 0.5 (timm's `Mixup`). All pieces are torchvision's/timm's:
`torchvision.transforms.v2.RandAugment` (on uint8 pixels), `timm.data.RandomErasing` and
`timm.data.Mixup` (per batch, on normalised floats).

RandAugment's cost is mostly per call. In a small batch one draw of ops covers a group of 4 images. A
batch with more such groups than RandAugment has (op, sign) pairs (23: more than 92 images) draws per
image, and `randaugment_batched` applies the draws in 9 calls per layer whatever the batch: one
`grid_sample` with a matrix per image for all geometric ops, one blend per colour op with a factor per
image (the same images as torchvision's ops, bit for bit on a CPU), and torchvision's own call for each
of the 4 ops without a sign. On a CPU at 16 px, strength 0.7, a batch of 128 takes 1.8 ms (5.3 ms with
one torchvision call per (op, sign) drawn, `randaugment_per_image`; 5.4 ms in groups of 4).

On a GPU a training step of a small ViT is bound by the host's work per kernel launch, not by the GPU,
so what counts is the number of calls. There every batch draws per image, and `erase_batched` draws
timm's rectangles (the same distribution, another random stream) with tensor operations and fills them
from one noise draw for the batch. Neither waits for the GPU. On an H100 (ViT-Ti, 32 px, batch 256,
strength 1.0) the augmentation of a batch took 3.73 ms instead of 10.98 ms.
Validation images are never augmented.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (strength, rung, RandAugment magnitude, Mixup alpha, erasing probability)
LADDER = [
    (0.0, "none", 0, 0.0, 0.0),
    (1 / 6, "light1", 0, 0.0, 0.0),
    (2 / 6, "light2", 10, 0.2, 0.0),
    (3 / 6, "medium1", 15, 0.2, 0.1),
    (4 / 6, "medium2", 15, 0.5, 0.15),
    (5 / 6, "strong1", 20, 0.5, 0.2),
    (1.0, "strong2", 20, 0.8, 0.25),
]
RANDAUG_LAYERS = 2
RANDAUG_BINS = 21
RANDAUG_GROUP = 4
CUTMIX_PER_MIXUP = 1.25
MEAN, STD = 0.5, 0.5


@dataclass(frozen=True)
class AugmentPlan:
    """The numbers `aug_strength` maps to."""

    strength: float
    rung: str
    randaug_layers: int
    randaug_magnitude: int
    mixup_alpha: float
    cutmix_alpha: float
    erasing_prob: float


def plan(strength: float) -> AugmentPlan:
    """Interpolate the ladder at `strength` (see the module table)."""
    strength = min(max(float(strength), 0.0), 1.0)
    rung = [r for s, r, *_ in LADDER if s <= strength + 1e-9][-1]
    for (s0, _, m0, a0, e0), (s1, _, m1, a1, e1) in zip(LADDER, LADDER[1:]):
        if strength <= s1:
            t = (strength - s0) / (s1 - s0)
            mixup = a0 + t * (a1 - a0)
            return AugmentPlan(strength, rung, RANDAUG_LAYERS if strength > 0 else 0, round(m0 + t * (m1 - m0)),
                               mixup, mixup * CUTMIX_PER_MIXUP, e0 + t * (e1 - e0))
    raise AssertionError("unreachable: strength is clamped to [0, 1]")


class BatchAugment:
    """Turns a uint8 training batch into normalised floats and (soft) targets, per `AugmentPlan`."""

    def __init__(self, strength: float, num_classes: int, label_smoothing: float):
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import SoftTargetCrossEntropy
        from torchvision.transforms import v2

        self.plan = plan(strength)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        p = self.plan
        self.randaug = (v2.RandAugment(num_ops=p.randaug_layers, magnitude=p.randaug_magnitude,
                                       num_magnitude_bins=RANDAUG_BINS) if p.randaug_layers else None)
        self.erasing = RandomErasing(p.erasing_prob, mode="pixel", device="cpu") if p.erasing_prob > 0 else None
        self.mixup = (Mixup(mixup_alpha=p.mixup_alpha, cutmix_alpha=p.cutmix_alpha, label_smoothing=label_smoothing,
                            num_classes=num_classes) if p.mixup_alpha > 0 else None)
        self.train_loss: nn.Module = (SoftTargetCrossEntropy() if self.mixup
                                      else nn.CrossEntropyLoss(label_smoothing=label_smoothing))
        self.per_image_draws: bool | None = None  # None: per image in a batch with many groups, or on a GPU
        # Per-image draws applied in few calls (`randaugment_batched`, the same images as torchvision's ops)
        # and erasing drawn with tensor operations (`erase_batched`, timm's distribution but another random
        # stream). None: the first always, the second on a GPU; False: neither; True: both.
        self.batched: bool | None = None
        self.per_image_above = RANDAUG_GROUP * _draw_pairs(self.randaug) if self.randaug is not None else 0
        self._magnitudes: dict[tuple, Any] = {}  # per op and image size: magnitudes, matrices, op tables

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.randaug is not None:
            per_image = self.per_image_draws
            if per_image is None:
                per_image = len(images) > self.per_image_above or images.is_cuda
            if per_image and self.batched is not False:
                images = randaugment_batched(self.randaug, images, self._magnitudes)
            elif per_image:
                images = randaugment_per_image(self.randaug, images, self._magnitudes)
            else:
                # One RandAugment draw (ops and their random signs) per group of RANDAUG_GROUP images: on
                # small images the per-call cost dominates, and a draw per image cost ~15 % of a CPU epoch.
                images = randaugment_groups(self.randaug, images, self._magnitudes)
        x = normalize(images)
        if self.erasing is not None:
            if self._batched(x):
                x = erase_batched(self.erasing, x)
            else:
                self.erasing.device = x.device
                x = self.erasing(x)
        if self.mixup is None:
            return x, labels
        return self._mix(x, labels)

    def _batched(self, images: torch.Tensor) -> bool:
        return images.is_cuda if self.batched is None else self.batched

    def _mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        # timm's Mixup pairs images within the batch and needs an even count; an odd last image
        # keeps its own (smoothed) label.
        even = len(x) - len(x) % 2
        if even == 0:
            return x, mixup_target(labels, self.num_classes, 1.0, self.label_smoothing)
        if even == len(x):
            return self.mixup(x, labels)
        mixed, soft = self.mixup(x[:even], labels[:even])
        last = mixup_target(labels[even:], self.num_classes, 1.0, self.label_smoothing)
        return torch.cat([mixed, x[even:]]), torch.cat([soft, last])


def _draw_pairs(randaug) -> int:
    """The (op, sign) pairs a RandAugment draw can give: 23 for torchvision's 14 ops."""
    return sum(2 if signed else 1 for _fn, signed in randaug._AUGMENTATION_SPACE.values())


def randaugment_groups(randaug, images: torch.Tensor, magnitudes: dict) -> torch.Tensor:
    """`torch.cat([randaug(group) for group in images.split(RANDAUG_GROUP)])`, image for image and with
    the same random draws (op, then sign where the op has one), without the per-call work of
    torchvision's transform (input flattening and checks) and with each op's magnitude looked up once
    (`magnitudes`, a cache kept by the caller): 2.4 instead of 3.0 ms per batch of 64 at 16 px."""
    space = randaug._AUGMENTATION_SPACE
    names = tuple(space)
    height, width = images.shape[-2:]
    out = []
    for group in images.split(RANDAUG_GROUP):
        for _ in range(randaug.num_ops):
            name = names[int(torch.randint(len(names), ()))]  # torchvision's _get_random_item
            magnitude = _magnitude(randaug, name, height, width, magnitudes)
            if magnitude is None:
                magnitude = 0.0
            elif space[name][1] and torch.rand(()) <= 0.5:  # a signed op
                magnitude = -magnitude
            group = randaug._apply_image_or_video_transform(group, name, magnitude,
                                                            interpolation=randaug.interpolation, fill=randaug._fill)
        out.append(group)
    return torch.cat(out)


def randaugment_per_image(randaug, images: torch.Tensor, magnitudes: dict | None = None) -> torch.Tensor:
    """torchvision's RandAugment (`randaug`) with its own draw per image and layer (op uniformly, sign
    with probability 0.5 for signed ops, magnitude fixed), as RandAugment is defined, applied with one
    call of torchvision's op per (op, sign) drawn in the batch (`magnitudes`: as for `randaugment_groups`).
    The reference `randaugment_batched` is tested against; BatchAugment runs it only with `batched = False`."""
    magnitudes = {} if magnitudes is None else magnitudes
    space = randaug._AUGMENTATION_SPACE
    names = list(space)
    height, width = images.shape[-2:]
    out = images.clone()
    for _ in range(randaug.num_ops):
        ops = torch.randint(len(names), (len(out),))
        negative = torch.rand(len(out)) <= 0.5
        calls = []  # (op name, signed magnitude, indices of its images), drawn on the CPU
        for k in ops.unique().tolist():
            magnitude = _magnitude(randaug, names[k], height, width, magnitudes)
            signs = (False, True) if space[names[k]][1] and magnitude is not None else (False,)
            magnitude = magnitude if magnitude is not None else 0.0
            for sign in signs:
                chosen = (ops == k) & (negative == sign) if len(signs) == 2 else ops == k
                idx = chosen.nonzero().squeeze(1)
                if len(idx):
                    calls.append((names[k], -magnitude if sign else magnitude, idx))
        indices = _to_device(torch.cat([idx for *_, idx in calls]), out.device)  # one copy, not one per call
        for (name, magnitude, _), idx in zip(calls, indices.split([len(idx) for *_, idx in calls])):
            out[idx] = randaug._apply_image_or_video_transform(out[idx], name, magnitude,
                                                               interpolation=randaug.interpolation, fill=randaug._fill)
    return out


GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLEND_OPS = ("Brightness", "Color", "Contrast", "Sharpness")


def randaugment_batched(randaug, images: torch.Tensor, magnitudes: dict) -> torch.Tensor:
    """`randaugment_per_image` in few calls (what BatchAugment runs for per-image draws, on a CPU and on a
    GPU): the same draws (op, then sign, per image and layer) and the same ops. Each image's geometric
    op (shear, translate, rotate: torchvision's inverse affine matrix for its op and sign) becomes one
    `grid_sample` over all of them with a matrix per image; brightness, colour, contrast and sharpness
    are one blend each with a factor per image (torchvision's formulas); the other ops are torchvision's,
    one call per op. 9 calls per layer instead of up to 23; images are sorted into them with tensor
    operations (no Python loop over images); and nothing waits for the GPU (torchvision's affine ops copy
    their matrix to the GPU with a wait)."""
    n, channels, height, width = images.shape
    key = ("table", channels, height, width)
    if key not in magnitudes:
        magnitudes[key] = _op_table(randaug, channels, height, width, magnitudes)
    groups, group_of, signed, params, unsigned_value = magnitudes[key]
    mode = randaug.interpolation  # "nearest", or InterpolationMode.NEAREST in older torchvision
    mode = getattr(mode, "value", mode)
    out = images.clone()
    for _ in range(randaug.num_ops):
        ops = torch.randint(len(group_of), (n,))
        sign = ((torch.rand(n) <= 0.5) & signed[ops]).long()
        group = group_of[ops]
        kept = (group >= 0).nonzero().squeeze(1)
        order = kept[torch.argsort(group[kept], stable=True)]
        counts = torch.bincount(group[kept], minlength=len(groups)).tolist()
        index = _to_device(order, out.device).split(counts)
        rows = _to_device(params[ops[order], sign[order]], out.device).split(counts)
        for op, idx, vals, count in zip(groups, index, rows, counts):
            if not count:
                continue
            if op == "affine":
                out[idx] = _affine_batch(out[idx], vals.view(-1, 2, 3), mode)
            elif op in BLEND_OPS:
                out[idx] = _blend_batch(out[idx], op, vals[:, 0].view(-1, 1, 1, 1), vals[:, 1].view(-1, 1, 1, 1))
            else:  # the same value for every image: these ops take no sign
                out[idx] = randaug._apply_image_or_video_transform(out[idx], op, unsigned_value[op],
                                                                   interpolation=randaug.interpolation,
                                                                   fill=randaug._fill)
    return out


def _op_table(randaug, channels: int, height: int, width: int, magnitudes: dict):
    """For `randaugment_batched`, per op of RandAugment's space (in its order): its call group (-1: none),
    whether it takes a sign, and 6 parameters per sign (an inverse affine matrix; a blend's f and 1 - f,
    both rounded from doubles as torchvision's), plus the value of each op that takes no sign."""
    space = randaug._AUGMENTATION_SPACE
    groups = ["affine", *BLEND_OPS]
    group_of, signed, params, unsigned_value = [], [], [], {}
    for name, (_bins, takes_sign) in space.items():
        magnitude = _magnitude(randaug, name, height, width, magnitudes)
        has_sign = takes_sign and magnitude is not None
        values = (magnitude, -magnitude) if has_sign else (magnitude, magnitude)
        if name in GEOMETRIC_OPS:
            group_of.append(0)
            params.append([_inverse_affine(name, v, height, width) for v in values])
        elif name in BLEND_OPS:
            group_of.append(-1 if name == "Color" and channels == 1 else groups.index(name))  # gray: as PIL
            params.append([[1.0 + v, 1.0 - (1.0 + v), 0.0, 0.0, 0.0, 0.0] for v in values])
        elif name == "Identity":
            group_of.append(-1)
            params.append([[0.0] * 6] * 2)
        else:
            groups.append(name)
            group_of.append(len(groups) - 1)
            unsigned_value[name] = 0.0 if magnitude is None else magnitude
            params.append([[0.0] * 6] * 2)
        signed.append(has_sign)
    return groups, torch.tensor(group_of), torch.tensor(signed), torch.tensor(params), unsigned_value


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy that does not wait for the GPU (from pinned memory: from pageable memory it would)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _inverse_affine(name: str, value: float, height: int, width: int) -> list[float]:
    """torchvision's inverse affine matrix (6 numbers) for RandAugment's geometric op `name` at `value`,
    with the arguments its `_apply_image_or_video_transform` and `affine`/`rotate` pass."""
    import math

    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    centre, angle, translate, shear = [0.0, 0.0], 0.0, [0.0, 0.0], [0.0, 0.0]
    if name in ("ShearX", "ShearY"):  # sheared about the corner (centre=[0, 0] in pixels)
        centre = [-width * 0.5, -height * 0.5]
        shear = [math.degrees(math.atan(value)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(value))]
    elif name == "TranslateX":
        translate = [float(int(value)), 0.0]
    elif name == "TranslateY":
        translate = [0.0, float(int(value))]
    else:  # Rotate: rotate() turns the angle into [0, 360) and passes it negated
        angle = -(value % 360)
    return _get_inverse_affine_matrix(centre, angle, translate, 1.0, shear)


def _affine_batch(images: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """torchvision's `_affine_grid` + `_apply_grid_transform` (fill 0) with one matrix per image."""
    n, _channels, height, width = images.shape
    base, scale = _base_grid(height, width, images.device)
    grid = base.expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
    sampled = nn.functional.grid_sample(images.float(), grid.view(n, height, width, 2), mode=mode,
                                        padding_mode="zeros", align_corners=False)
    return sampled.round_().to(images.dtype)


@functools.lru_cache(maxsize=16)
def _base_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's `_affine_grid` before the matrix: pixel centres (x, y, 1), and its scale."""
    x = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)
    y = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)
    base = torch.stack([x.expand(height, width), y.unsqueeze(-1).expand(height, width),
                        torch.ones(height, width, device=device)], dim=-1)
    return base.view(1, height * width, 3), torch.tensor([0.5 * width, 0.5 * height], device=device)


@functools.lru_cache(maxsize=16)
def _sharpness_kernel(channels: int, device: torch.device) -> torch.Tensor:
    """torchvision's smoothing kernel for adjust_sharpness (1/13 around 5/13), once per device."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    return torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=device).expand(channels, 1, 3, 3)


def _blend_batch(images: torch.Tensor, op: str, factor: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness / _saturation / _contrast / _sharpness on uint8 images with a factor
    per image (`factor` and `rest` = 1 - factor: N x 1 x 1 x 1). Saturation on gray images is never called
    (it leaves them as they are: `_op_table` gives it no call there)."""
    channels, height, width = images.shape[-3:]
    x = images.float()
    if op == "Brightness":
        return x.mul_(factor).clamp_(0, 255).to(images.dtype)
    if op == "Sharpness":
        if height <= 2 or width <= 2:
            return images
        blurred = nn.functional.conv2d(x, _sharpness_kernel(channels, x.device), groups=channels).round_()
        inner = x[..., 1:-1, 1:-1]
        inner.addcmul_(blurred.sub_(inner), rest)  # x + (1 - f) (blur - x), as torchvision
        return x.clamp_(0, 255).to(images.dtype)
    if channels == 3:
        gray = x[:, 0:1].mul(0.2989).add_(x[:, 1:2], alpha=0.587).add_(x[:, 2:3], alpha=0.114).floor_()
    else:
        gray = x
    other = gray.mean(dim=(-3, -2, -1), keepdim=True) if op == "Contrast" else gray
    return torch.addcmul(x.mul(factor), other, rest).clamp_(0, 255).to(images.dtype)


def erase_batched(erasing, x: torch.Tensor) -> torch.Tensor:
    """timm's RandomErasing (`erasing`: its probability, area and aspect ranges, one rectangle per image,
    per-pixel normal noise) on a batch on a GPU, drawn with tensor operations instead of a Python loop
    over the images: an image is erased with `erasing.probability`; its rectangle is the first of 10
    draws (area uniform in [min_area, max_area] of the image, log-aspect uniform) that fits, as in timm's
    loop, placed uniformly; the noise is one normal draw for the whole batch, seeded from the CPU draws."""
    if erasing.max_count != 1:  # several rectangles per image: timm's own loop
        erasing.device = x.device
        return erasing(x)
    n, _channels, height, width = x.shape
    erased = torch.rand(n, dtype=torch.float64) <= erasing.probability
    area = torch.empty(n, 10, dtype=torch.float64).uniform_(erasing.min_area, erasing.max_area) * height * width
    aspect = torch.empty(n, 10, dtype=torch.float64).uniform_(*erasing.log_aspect_ratio).exp_()
    h, w = (area * aspect).sqrt_().round_().long(), (area / aspect).sqrt_().round_().long()
    fits = (h < height) & (w < width)
    first, images = fits.int().argmax(1), torch.arange(n)  # the first attempt that fits (timm: up to 10)
    h, w = h[images, first] * (fits[images, first] & erased), w[images, first]  # h = 0: nothing erased
    top = (torch.rand(n, dtype=torch.float64) * (height - h + 1)).long()
    left = (torch.rand(n, dtype=torch.float64) * (width - w + 1)).long()
    r = _to_device(torch.stack([top, h, left, w], 1), x.device)
    rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    inside = (((rows >= r[:, 0:1]) & (rows < r[:, 0:1] + r[:, 1:2])).unsqueeze(2)
              & ((cols >= r[:, 2:3]) & (cols < r[:, 2:3] + r[:, 3:4])).unsqueeze(1))
    # The noise follows the CPU draws alone, whichever thread augments: the step draws dropout and
    # drop-path from the device's default generator on the training thread (see train._prefetched).
    noise = torch.Generator(x.device).manual_seed(int(torch.randint(2**62, (), dtype=torch.int64)))
    return torch.where(inside.unsqueeze(1), torch.randn(x.shape, generator=noise, device=x.device, dtype=x.dtype), x)


def _magnitude(randaug, name: str, height: int, width: int, cache: dict) -> float | None:
    """The magnitude of op `name` at `randaug`'s level for this image size (None: the op takes none),
    computed once per op and size (torchvision builds the whole bin table on each call)."""
    key = (name, height, width)
    if key not in cache:
        bins = randaug._AUGMENTATION_SPACE[name][0](randaug.num_magnitude_bins, height, width)
        cache[key] = float(bins[randaug.magnitude]) if bins is not None else None
    return cache[key]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1] (mean 0.5, std 0.5 per channel, as in ViT/AugReg)."""
    return images.float().div_(255.0).sub_(MEAN).div_(STD)
