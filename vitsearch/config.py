"""`TrainConfig`: every training knob, its recommended default and where that default comes from.

The config is a frozen dataclass; `TrainConfig.from_dict` / `load_config` are the only ways user
input becomes one, and they reject unknown keys (naming the valid ones) and invalid values (naming
key, value and rule). This module imports no torch, so loading a config or a search space is cheap.

Learning-rate scaling rule: `lr` is the peak learning rate *at an effective batch of
`lr_base_batch`* (512). The rate actually used is `lr * batch_size / lr_base_batch` for
`lr_scaling: linear` (Goyal et al. 2017; DeiT's `5e-4 * batch / 512`), `lr * sqrt(batch_size /
lr_base_batch)` for `sqrt` (the square-root rule for Adam-type optimizers, Malladi et al. 2022), or
`lr` unchanged for `none`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Short model names -> (timm architecture, overrides). Any timm name of the form
# vit_{tiny,small,base,large}_patch<P>_<S> is accepted as well.
MODEL_FAMILIES: dict[str, tuple[str, dict[str, int]]] = {
    # Explicit micro size for tests and laptops: ~0.2 M parameters.
    "vit_micro": ("vit_tiny_patch16_224", {"embed_dim": 64, "depth": 4, "num_heads": 4}),
    "vit_tiny": ("vit_tiny_patch16_224", {}),  # DeiT-Ti: width 192, depth 12, 3 heads
    "vit_small": ("vit_small_patch16_224", {}),  # ViT-S / DeiT-S: width 384, depth 12, 6 heads
    "vit_base": ("vit_base_patch16_224", {}),  # ViT-B: width 768, depth 12, 12 heads
}
TIMM_VIT_NAME = re.compile(r"^vit_(tiny|small|base|large)_patch\d+_\d+$")
VIT_WIDTH_HEADS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16)}  # timm's
VIT_DEPTH = {"tiny": 12, "small": 12, "base": 12, "large": 24}  # timm's


def _vit_family(model: str) -> tuple[str, dict[str, int]] | None:
    """A ViT model's timm size (tiny, small, base, large) and the overrides of its short name; None for a model
    that is no ViT."""
    name, overrides = MODEL_FAMILIES.get(model, (model, {}))
    found = TIMM_VIT_NAME.match(name)
    return (found.group(1), overrides) if found else None


def width_and_heads(model: str, embed_dim: int | None, num_heads: int | None) -> tuple[int, int] | None:
    """The width and head count a ViT config builds with (its own, else its family's); None for a model that
    is no ViT."""
    if (family := _vit_family(model)) is None:
        return None
    (width, heads), overrides = VIT_WIDTH_HEADS[family[0]], family[1]
    return embed_dim or overrides.get("embed_dim", width), num_heads or overrides.get("num_heads", heads)


def model_depth(model: str, depth: int | None) -> int | None:
    """The blocks a ViT config builds (its own depth, else its family's); None for a model that is no ViT."""
    if (family := _vit_family(model)) is None:
        return None
    return depth or family[1].get("depth", VIT_DEPTH[family[0]])


DATA_SCHEMES = ("digits", "fashion_mnist", "imagefolder", "cifar10", "cifar100")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STEMS = ("patch", "conv")
ATTENTIONS = ("full", "linformer")
DISTILL_MODES = ("hard", "soft")
# DeiT's distillation weights: hard = 1/2 CE(labels) + 1/2 CE(teacher argmax); soft = 0.9 CE + 0.1 tau^2 KL.
DISTILL_DEFAULT_WEIGHT = {"hard": 0.5, "soft": 0.1}
LR_SCALINGS = ("linear", "sqrt", "none")
PATCH_CANDIDATES = (16, 8, 4, 2, 1)
MIN_TOKENS_PER_SIDE = 7
MAX_PATCH1_SIZE = 32  # patch 1 up to 32 px: at most 1,024 tokens
NATIVE_SIZE_CAP = 224  # an image folder's size when image_size is unset: at most ViT's 224 px
LOADERS = ("auto", "memory", "stream")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the recommended ViT recipe; each comment names its source."""

    # --- model ---
    model: str = "vit_tiny"  # DeiT-Ti (Touvron et al. 2021): the smallest standard ViT
    embed_dim: int | None = None  # None: the family's width
    depth: int | None = None  # None: the family's depth
    num_heads: int | None = None  # None: the family's head count
    patch_size: int | None = None  # None: rule in auto_patch_size (>= 7 tokens per side)
    image_size: int | None = None  # None: the dataset's native size
    drop_path: float = 0.1  # stochastic depth 0.1: DeiT-S/Ti recipe
    stem: str = "patch"  # patch: ViT's patchify conv; conv: stride-2 3x3 conv stack (Xiao et al. 2021)
    init_from: str | None = None  # a local checkpoint (vitsearch's or timm's) or `train` run folder; model.py
    freeze_blocks: int = 0  # with init_from: freeze patch/pos embedding, CLS and the first k blocks
    layer_decay: float | None = None  # layer-wise lr decay for fine-tuning (BEiT/timm), e.g. 0.75
    attention: str = "full"  # full: timm's fused attention; linformer: keys/values projected to linformer_k
    linformer_k: int | None = None  # None: a quarter of the tokens, at least 4 (Linformer's k/n = 128/512)

    # --- distillation (DeiT, Touvron et al. 2021), off unless `teacher` is set ---
    teacher: str | None = None  # a `train` run folder or checkpoint of a model fine-tuned on the same data
    distill_mode: str = "hard"  # hard: CE with the teacher's argmax (DeiT's better one); soft: KL at temperature
    distill_weight: float | None = None  # share of the distillation term; None: DeiT's (hard 0.5, soft 0.1)
    distill_temperature: float = 3.0  # soft distillation temperature: DeiT (tau = 3)

    # --- data ---
    data: str = "digits"  # digits | fashion_mnist[:PATH] | imagefolder:PATH | cifar10:PATH | cifar100:PATH
    data_subset: int | None = None  # use only this many training images (None: all)
    val_fraction: float = 0.1  # held-out share of the training files, split from `seed`
    loader: str = "auto"  # image folders: memory, stream (files read per batch by workers), auto (by size)
    loader_workers: int | None = None  # streaming loader processes; None: the run's CPU threads, at most 8

    # --- optimisation ---
    epochs: int = 100  # budget; DeiT trains 300 on ImageNet, small-data ViTs 100-300 (CCT, SL-ViT)
    batch_size: int = 512  # effective batch; ViT/DeiT recipes use 512-4096
    micro_batch_size: int | None = None  # None: 256 on CPU, probed on GPU; accumulation fills the rest
    lr: float = 1e-3  # peak AdamW lr at batch 512 (DeiT: 5e-4 at 512 for 300 ep; ViT-S/AugReg: 1e-3)
    lr_base_batch: int = 512  # batch at which `lr` is quoted
    lr_scaling: str = "linear"  # linear rule (Goyal et al. 2017, DeiT); see module docstring
    min_lr: float = 1e-5  # cosine floor: DeiT
    warmup_epochs: float = 5.0  # linear warmup: DeiT (5 epochs)
    weight_decay: float = 0.05  # AdamW decoupled wd: DeiT; not on biases, norms, pos-embed, CLS token
    label_smoothing: float = 0.1  # Szegedy et al. 2016, DeiT
    grad_clip: float = 1.0  # global-norm clipping at 1: ViT (Dosovitskiy et al. 2021); 0 turns it off
    aug_strength: float = 0.5  # AugReg ladder position (augment.LADDER): 0.5 = "medium"

    # --- numerics ---
    precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp32 (half is slow on CPUs)
    seed: int = 0  # seeds model init, data split, shuffling and augmentation
    monitors: bool = False  # per-epoch CLS norm, attention entropy, MLP sparsity on a probe batch
    compile: bool = False  # torch.compile the training step's model (its compile time counts in epoch 1)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a validated config; unknown keys and invalid values raise `ConfigError`."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        valid = cls.field_names()
        for key in values:
            if key not in valid:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        kinds = {f.name: f.type for f in fields(cls)}
        coerced = {key: _coerce(key, value, kinds[key]) for key, value in values.items()}
        cfg = cls(**coerced)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every value against its rule; raise `ConfigError` naming key, value and rule."""
        for key, value, ok, rule in _rules(self):
            if value is not None and not ok(value):
                raise ConfigError(f"invalid value for {key!r}: {value!r} ({rule})")

    @property
    def scaled_lr(self) -> float:
        """The peak lr used for `batch_size`, from `lr` at `lr_base_batch` (see module docstring)."""
        ratio = self.batch_size / self.lr_base_batch
        if self.lr_scaling == "linear":
            return self.lr * ratio
        if self.lr_scaling == "sqrt":
            return self.lr * math.sqrt(ratio)
        return self.lr

    @property
    def data_scheme(self) -> str:
        return self.data.split(":", 1)[0]

    @property
    def data_path(self) -> str | None:
        return self.data.split(":", 1)[1] if ":" in self.data else None


    @property
    def is_vit(self) -> bool:
        return _is_vit(self.model)

    @property
    def distill_share(self) -> float:
        """The weight of the distillation term (0 without a teacher)."""
        if self.teacher is None:
            return 0.0
        return self.distill_weight if self.distill_weight is not None else DISTILL_DEFAULT_WEIGHT[self.distill_mode]


# Keys whose value shapes the loaded data: a search loads data once, so these cannot be searched.
DATA_KEYS = ("data", "data_subset", "val_fraction", "image_size", "seed")


def _is_vit(name: str) -> bool:
    return name in MODEL_FAMILIES or bool(TIMM_VIT_NAME.match(name))


def _valid_model(name: str) -> bool:
    """A ViT (any run), or another timm architecture such as a CNN teacher (tf_efficientnet_lite0,
    resnet18); timm, and with it torch, is imported only for the latter."""
    if _is_vit(name):
        return True
    if not re.fullmatch(r"[a-z0-9_.]+", name):
        return False
    import timm

    return timm.is_model(name)


VIT_ONLY = ("patch_size", "embed_dim", "depth", "num_heads")


def _valid_data(spec: str) -> bool:
    scheme, _, path = spec.partition(":")
    if scheme not in DATA_SCHEMES:
        return False
    if scheme in ("imagefolder", "cifar10", "cifar100"):
        return bool(path)
    return scheme != "digits" or not path


PATH_KEYS = ("teacher", "init_from")  # config values that name local files (besides `data`'s PATH)


def absolute_paths(values: dict[str, Any], cwd: str, data: bool = True) -> dict[str, Any]:
    """`values` with relative local paths (`teacher`, `init_from`, the PATH of `data`) that exist as seen from
    the folder `cwd` made absolute there: a run folder's config.yaml, a search's space.yaml and its
    best_config.yaml then work from any folder, and Tune, which runs each trial in its own working
    directory, finds them too. Other values (timm:NAME, paths that do not exist) stay as written. Without
    `data`, the dataset spec stays as written (a trial: its config must match its checkpoint's)."""
    resolved = dict(values)

    def found(path: str) -> str | None:
        if path and not Path(path).expanduser().is_absolute() and (Path(cwd) / path).exists():
            return str(Path(cwd) / path)
        return None

    for key in PATH_KEYS:
        value = resolved.get(key)
        if isinstance(value, str) and (absolute := found(value)):
            resolved[key] = absolute
    spec = resolved.get("data")
    if data and isinstance(spec, str):
        scheme, _, path = spec.partition(":")
        if scheme in DATA_SCHEMES and (absolute := found(path)):
            resolved["data"] = f"{scheme}:{absolute}"
    return resolved


def auto_patch_size(image_size: int) -> int:
    """The patch when `patch_size` is unset: the largest of 16, 8, 4, 2, 1 that divides the image size and
    leaves at least 7 tokens per side (model.py's rule)."""
    for patch in PATCH_CANDIDATES:
        if image_size % patch == 0 and image_size // patch >= MIN_TOKENS_PER_SIDE:
            return patch
    return 1


def folder_image_size(median_side: int, patch_size: int | None) -> int:
    """An image folder's size when `image_size` is unset: its images' median shorter side, at most 224 px,
    rounded down to a multiple of the patch (`patch_size`, or the largest of 16, 8, 4, 2 that leaves >= 7
    tokens per side). So photos with a median side of 375 px train at 224 (14x14 patches of 16), not at
    375 px with 1-px patches (140,625 tokens); 25 px becomes 24 (12x12 patches of 2)."""
    size = min(median_side, NATIVE_SIZE_CAP)
    if patch_size:
        return max(patch_size, size - size % patch_size)
    patch = _grid_patch(size)
    return size - size % patch


def _grid_patch(size: int) -> int:
    """The largest of 16, 8, 4, 2, 1 that fits >= 7 times into `size`, dividing it or not (7-14 tokens per side
    once the size is rounded down to a multiple of it)."""
    return next((p for p in PATCH_CANDIDATES if size // p >= MIN_TOKENS_PER_SIDE), 1)


def _fits_auto_patch(image_size: int) -> bool:
    """With `patch_size` unset: ViT's 16-px patch, or at most 1,024 tokens (a smaller patch, forced by an
    image size that 16 does not divide, must not multiply the tokens: 150 px took patch 2, 5,625 tokens)."""
    patch = auto_patch_size(image_size)
    return patch == 16 or (image_size // patch) ** 2 <= MAX_PATCH1_SIZE ** 2


def _size_rule(c: TrainConfig) -> str:
    rule = "must be an integer >= 1"
    if not (c.is_vit and c.patch_size is None and isinstance(c.image_size, int) and c.image_size >= 1
            and not _fits_auto_patch(c.image_size)):
        return rule
    size, patch = c.image_size, auto_patch_size(c.image_size)
    fit = _grid_patch(size)
    return (f"{rule}; with patch_size unset, {patch}-px patches are the largest of 16, 8, 4, 2, 1 that divide it "
            f"into >= 7 tokens per side: {(size // patch) ** 2:,} tokens, more than {MAX_PATCH1_SIZE ** 2:,}; use "
            f"image_size {size - size % fit} or {size - size % fit + fit} ({fit}-px patches), or set patch_size")


def _folder_hint(spec: str) -> str:
    """For a bare folder given as the dataset: the spec that reads it as class folders."""
    if spec.partition(":")[0] in DATA_SCHEMES or not Path(spec).expanduser().is_dir():
        return ""
    return f"; for a folder of class folders: imagefolder:{spec}"


def _rules(c: TrainConfig):
    positive_int = "must be an integer >= 1"
    return [
        ("model", c.model, _valid_model,
         f"must be one of {', '.join(MODEL_FAMILIES)}, a timm ViT name like vit_small_patch16_224, or another "
         "timm architecture (a CNN teacher such as tf_efficientnet_lite0)"),
        *[(key, getattr(c, key), lambda _v: c.is_vit, "only ViT models have it") for key in VIT_ONLY],
        ("attention", c.attention, lambda v: v in ATTENTIONS and (v == "full" or c.is_vit),
         f"must be one of {', '.join(ATTENTIONS)}; linformer needs a ViT model"),
        ("linformer_k", c.linformer_k, lambda v: v >= 1 and c.attention == "linformer",
         "must be an integer >= 1, and is set only with attention: linformer"),
        ("monitors", c.monitors, lambda v: not v or c.is_vit, "monitors need a ViT model"),
        ("teacher", c.teacher, lambda v: bool(v.strip()), "must be a run folder or checkpoint path"),
        ("distill_mode", c.distill_mode, lambda v: v in DISTILL_MODES, f"must be one of {', '.join(DISTILL_MODES)}"),
        ("distill_weight", c.distill_weight, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        ("distill_temperature", c.distill_temperature, lambda v: v > 0 and math.isfinite(v),
         "must be a finite number > 0"),
        ("embed_dim", c.embed_dim, lambda v: v >= 1, positive_int),
        ("depth", c.depth, lambda v: v >= 1, positive_int),
        ("num_heads", c.num_heads, lambda v: v >= 1, positive_int),
        ("patch_size", c.patch_size, lambda v: v >= 1 and (c.image_size is None or c.image_size % v == 0),
         f"must be an integer >= 1 that divides image_size ({c.image_size})" if c.image_size else positive_int),
        ("image_size", c.image_size,
         lambda v: v >= 1 and (not c.is_vit or c.patch_size is not None or _fits_auto_patch(v)), _size_rule(c)),
        ("drop_path", c.drop_path, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        ("data", c.data, _valid_data,
         "must be digits, fashion_mnist[:PATH], imagefolder:PATH, cifar10:PATH or cifar100:PATH"
         + _folder_hint(c.data)),
        ("data_subset", c.data_subset, lambda v: v >= 1, positive_int),
        ("val_fraction", c.val_fraction, lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
        ("loader", c.loader, lambda v: v in LOADERS and (v != "stream" or c.data_scheme == "imagefolder"),
         f"must be one of {', '.join(LOADERS)}; stream reads an imagefolder: dataset's files per batch"),
        ("loader_workers", c.loader_workers, lambda v: v >= 0, "must be an integer >= 0 (0: read in the trainer)"),
        ("epochs", c.epochs, lambda v: v >= 1, positive_int),
        ("batch_size", c.batch_size, lambda v: v >= 1, positive_int),
        ("micro_batch_size", c.micro_batch_size, lambda v: v >= 1, positive_int),
        ("lr", c.lr, lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0"),
        ("lr_base_batch", c.lr_base_batch, lambda v: v >= 1, positive_int),
        ("lr_scaling", c.lr_scaling, lambda v: v in LR_SCALINGS, f"must be one of {', '.join(LR_SCALINGS)}"),
        ("min_lr", c.min_lr, lambda v: 0 <= v <= c.lr, "must be >= 0 and <= lr"),
        ("warmup_epochs", c.warmup_epochs, lambda v: v >= 0, "must be >= 0; a warmup longer than the run is cut to it"),
        ("weight_decay", c.weight_decay, lambda v: v >= 0, "must be >= 0"),
        ("label_smoothing", c.label_smoothing, lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("grad_clip", c.grad_clip, lambda v: v >= 0, "must be >= 0 (0 turns clipping off)"),
        ("aug_strength", c.aug_strength, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        ("precision", c.precision, lambda v: v in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
        ("seed", c.seed, lambda v: v >= 0, "must be an integer >= 0"),
        # (a patch size left to the image size is checked as the model is built)
        ("stem", c.stem, lambda v: v in STEMS and (v == "patch" or (c.is_vit and (
            c.patch_size is None or c.patch_size & (c.patch_size - 1) == 0))),
         f"must be one of {', '.join(STEMS)}; conv needs a ViT model and a patch size that is a power of two"
         + (f" (patch_size is {c.patch_size})" if c.patch_size else "")),
        ("freeze_blocks", c.freeze_blocks, lambda v: v >= 0 and (v == 0 or (c.init_from is not None and c.is_vit)),
         "must be >= 0, and 0 unless init_from names pretrained weights for a ViT"),
        ("layer_decay", c.layer_decay, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ]


def _coerce(key: str, value: Any, kind: str) -> Any:
    """Accept YAML's natural types (an int where a float is expected); reject the rest by name."""
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ConfigError(f"invalid value for {key!r}: None (a value is required)")
    base = kind.replace(" | None", "")
    if base == "float" and isinstance(value, str):
        # PyYAML reads `1e-3` (no dot) as a string; accept any numeric spelling for float keys.
        try:
            value = float(value)
        except ValueError:
            pass
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if base == "str" and isinstance(value, str):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    expected = {"int": "an int", "bool": "true or false"}.get(base, f"a {base}")
    raise ConfigError(f"invalid value for {key!r}: {value!r} (must be {expected})")


def idle_keys_note(cfg: TrainConfig) -> str | None:
    """A note for keys set away from their defaults that this config never reads (`--set distill_mode=soft`
    without a teacher trained as without it, and said nothing). Not an error: a search's best_config.yaml may
    rightly hold such keys, drawn for a trial whose drawn teacher was none. Spaces refuse them (space.py)."""
    default = TrainConfig()
    idle = []
    if cfg.teacher is None:
        idle += [(k, "without a teacher") for k in ("distill_mode", "distill_weight", "distill_temperature")
                 if getattr(cfg, k) != getattr(default, k)]
    elif cfg.distill_mode != "soft" and cfg.distill_temperature != default.distill_temperature:
        idle.append(("distill_temperature", f"with distill_mode {cfg.distill_mode} (it acts on soft distillation)"))
    if cfg.lr_scaling == "none" and cfg.lr_base_batch != default.lr_base_batch:
        idle.append(("lr_base_batch", "with lr_scaling none (lr is the rate used whatever the batch)"))
    if cfg.drop_path != default.drop_path and model_depth(cfg.model, cfg.depth) == 1:
        idle.append(("drop_path", "with depth 1 (stochastic depth rises from 0 at the first block: a lone block is "
                                  "never dropped)"))
    if not idle:
        return None
    return "note: " + "; ".join(f"{k} {getattr(cfg, k)!r} has no effect {why}" for k, why in idle)


def warmup_note(cfg: TrainConfig, budget: str = "the run", whose: str = "the") -> str | None:
    """A line where the warmup fills the run: the trainer cuts it to the run, so the lr rises until the last step
    and never decays (`train --set epochs=2`, or a short search, with the default 5-epoch warmup: nothing said so,
    and every trial of such a search learned at a fraction of its lr)."""
    if cfg.warmup_epochs <= 0 or cfg.warmup_epochs < cfg.epochs:
        return None
    epochs = f"{cfg.epochs} epoch" + "s" * (cfg.epochs != 1)
    return (f"note: warmup_epochs {cfg.warmup_epochs:g} is not shorter than {budget} ({epochs}): {whose} "
            f"lr rises until the last step and never decays; set warmup_epochs below {cfg.epochs}")


def changed_keys(cfg: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The keys whose value in `cfg` differs from `saved` (a run's or a checkpoint's config), in field order."""
    return [k for k, v in cfg.to_dict().items() if saved.get(k) != v]


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (`lr` under `search` twice): YAML
    loaders keep the last one without a word, so the first was silently not what ran."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping (the first would be ignored)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Load a YAML file with the safe loader; errors become one-line `ConfigError`s."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.__class__.__name__}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{what} file {str(path)!r} is not valid YAML{where}: {problem}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a config YAML (or the defaults when `path` is None) and apply `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
        space_keys = sorted({"search", "fixed", "scheduler"} & set(loaded or {}))
        if space_keys:
            raise ConfigError(f"config file {str(path)!r} is a search space (it has {', '.join(space_keys)}): run it "
                              f"with `search --space {path}`; `train --config` takes a YAML of TrainConfig keys")
        values.update(loaded or {})
    for item in overrides or []:  # a key given again overrides the earlier (a script's base flags, then its own)
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must have the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
            value = raw  # `data=imagefolder:` read as YAML is a mapping ({'imagefolder': None}); the text was meant
        values[key.strip()] = value
    return TrainConfig.from_dict(values)
