"""`build_model`: a timm Vision Transformer sized to the data.

Patch-size rule (when `patch_size` is not set): the largest of 16, 8, 4, 2, 1 that divides the image
size and leaves at least 7 tokens per side. That gives ViT's 16 px patches (14x14 tokens) at 224 px,
the small-data convention of 4 px patches at 32 px (8x8, CIFAR ViTs) and 28 px (7x7, Fashion-MNIST),
and 2 px at 16 px (8x8). Below 7 px no patch size can keep 7 tokens: patch 1 is used.
"""

from __future__ import annotations

from pathlib import Path

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
    if cfg.init_from:
        load_pretrained(model, cfg.init_from)
        freeze(model, cfg.freeze_blocks)
    return model


def load_pretrained(model: nn.Module, source: str) -> None:
    """Start from a local checkpoint: vitsearch's (`model` key), timm's (`state_dict`/`model` key or a
    bare state dict) or safetensors. The position embedding is resampled to the new token grid, the
    patch embedding to a new patch size and channel count, and a head of another class count is left
    to its fresh initialisation. `timm:NAME` asks timm's hub, which needs a network."""
    import torch
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    if source.startswith("timm:"):
        import timm

        try:
            pretrained = timm.create_model(source[5:], pretrained=True)
        except Exception as exc:  # no network, unknown tag, ...: hub errors come in many types
            raise ConfigError(f"invalid value for 'init_from': {source!r} (timm could not fetch it: "
                              f"{exc.__class__.__name__}; download the weights elsewhere and give a local "
                              "file)") from None
        state = pretrained.state_dict()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"invalid value for 'init_from': {source!r} (no such file; give a checkpoint "
                              "path, or timm:NAME where a network is available)")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign files raise many different errors
            raise ConfigError(f"invalid value for 'init_from': {source!r} (cannot be read: "
                              f"{exc.__class__.__name__})") from None
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    own = model.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=1)
    weight = "patch_embed.proj.weight"
    if weight in state and weight in own and state[weight].shape != own[weight].shape:
        w = state[weight]
        if w.shape[1] != own[weight].shape[1]:  # channels: 1 <-> 3 by averaging, then repeating
            w = w.mean(1, keepdim=True).repeat(1, own[weight].shape[1], 1, 1)
        if w.shape[-2:] != own[weight].shape[-2:]:
            w = resample_patch_embed(w, list(own[weight].shape[-2:]))
        state[weight] = w
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and v.shape != own.get(k, v).shape)}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ConfigError(f"invalid value for 'init_from': {source!r} (weights for {mismatched[0]!r} have shape "
                          f"{tuple(state[mismatched[0]].shape)}, this model needs {tuple(own[mismatched[0]].shape)})")
    missing, _ = model.load_state_dict(state, strict=False)
    not_head = [k for k in missing if not k.startswith("head.")]
    if not_head:
        raise ConfigError(f"invalid value for 'init_from': {source!r} (no weights for {not_head[0]!r}: "
                          "a different architecture)")


def freeze(model: nn.Module, blocks: int) -> None:
    """Freeze the patch and position embeddings, the CLS token and the first `blocks` blocks (all blocks
    and the final norm too when `blocks` >= depth: only the head trains)."""
    if blocks <= 0:
        return
    frozen = [model.patch_embed, *model.blocks[:blocks]]
    if blocks >= len(model.blocks):
        frozen.append(model.norm)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    for name in ("pos_embed", "cls_token"):
        if getattr(model, name, None) is not None:
            getattr(model, name).requires_grad_(False)


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
