"""`build_model`: a timm Vision Transformer sized to the data.

Patch-size rule (when `patch_size` is not set): the largest of 16, 8, 4, 2, 1 that divides the image
size and leaves at least 7 tokens per side. That gives ViT's 16 px patches (14x14 tokens) at 224 px,
the small-data convention of 4 px patches at 32 px (8x8, CIFAR ViTs) and 28 px (7x7, Fashion-MNIST),
and 2 px at 16 px (8x8). Below 7 px no patch size can keep 7 tokens: patch 1 is used.
"""

from __future__ import annotations

from torch import nn

from .config import MODEL_FAMILIES, TrainConfig
from .errors import ConfigError

PATCH_CANDIDATES = (16, 8, 4, 2, 1)
MIN_TOKENS_PER_SIDE = 7


def auto_patch_size(image_size: int) -> int:
    for patch in PATCH_CANDIDATES:
        if image_size % patch == 0 and image_size // patch >= MIN_TOKENS_PER_SIDE:
            return patch
    return 1


def architecture(cfg: TrainConfig) -> tuple[str, dict[str, int]]:
    """timm architecture name and width/depth/heads overrides for `cfg`."""
    name, overrides = MODEL_FAMILIES.get(cfg.model, (cfg.model, {}))
    overrides = dict(overrides)
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(cfg, key) is not None:
            overrides[key] = getattr(cfg, key)
    return name, overrides


def build_model(cfg: TrainConfig, channels: int, image_size: int, num_classes: int) -> nn.Module:
    import timm

    name, overrides = architecture(cfg)
    patch = cfg.patch_size or auto_patch_size(image_size)
    if image_size % patch:
        raise ConfigError(f"invalid value for 'patch_size': {patch} (must divide the image size {image_size})")
    width = overrides.get("embed_dim")
    heads = overrides.get("num_heads")
    if width and heads and width % heads:
        raise ConfigError(f"invalid value for 'num_heads': {heads} (must divide embed_dim {width})")
    try:
        model = timm.create_model(name, pretrained=False, img_size=image_size, patch_size=patch, in_chans=channels,
                                  num_classes=num_classes, drop_path_rate=cfg.drop_path, **overrides)
    except AssertionError as exc:  # timm asserts e.g. "dim should be divisible by num_heads"
        raise ConfigError(f"model {cfg.model!r} cannot be built with {overrides}: {exc}") from None
    if cfg.stem == "conv":
        model.patch_embed.proj = conv_stem(channels, model.embed_dim, patch)
    return model


def conv_stem(in_chans: int, embed_dim: int, patch: int) -> nn.Sequential:
    """Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"): log2(patch) stride-2 3x3
    convolutions with BatchNorm and ReLU, widths doubling up to embed_dim (ViT-S/16: 48, 96, 192, 384),
    then a 1x1 projection to embed_dim. Same token grid as the patchify stem it replaces."""
    if patch & (patch - 1):
        raise ConfigError(f"invalid value for 'patch_size': {patch} (stem: conv needs a power of two)")
    steps = patch.bit_length() - 1
    layers: list[nn.Module] = []
    width_in = in_chans
    for i in range(steps):
        width = max(8, embed_dim // 2 ** (steps - 1 - i))
        layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        width_in = width
    layers.append(nn.Conv2d(width_in, embed_dim, 1))
    return nn.Sequential(*layers)
