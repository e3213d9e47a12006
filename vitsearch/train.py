"""The shared ViT trainer: `train(cfg, report) -> dict`. Imports neither Ray nor Optuna.

One call trains one config: AdamW (no weight decay on biases, norms, position embedding, CLS token),
linear warmup then cosine decay per optimizer step (timm's scheduler), gradient accumulation up to
the effective batch, global-norm clipping, autocast in bf16/fp16 (fp16 with dynamic loss scaling).
After every epoch it writes a checkpoint (when given a folder) and then calls `report(metrics)` once;
whoever called `train` decides what a report means (a progress line, a Ray Tune result).
A non-finite loss raises `NonFiniteLossError`; the caller decides what to do with it.
On a GPU, when the config augments, a background thread gathers and augments the next batch while the
step's backward pass runs (`_prefetched`): the same batches, without the training thread's time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import monitor
from .augment import BatchAugment, normalize
from .config import TrainConfig, changed_keys
from .data import ImageData, load_data
from .distill import distill_loss, load_teacher
from .errors import ConfigError, DataError, NonFiniteLossError, UserError
from .files import write_bytes
from .model import build_model

Report = Callable[[dict[str, Any]], None]
CPU_MICRO_BATCH = 256  # the CPU default for the largest micro-batch; accumulation makes up the rest
CHECK_EVERY_STEPS = 25  # loss finiteness is checked this often (each check is a host-device sync)
CHECKPOINT_NAME = "checkpoint.pt"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"invalid device {device!r} (must be auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):  # (mps, xpu: torch names them, the trainer runs on neither; a traceback)
        raise ConfigError(f"invalid device {device!r} (must be auto, cpu, cuda or cuda:N: vitsearch trains on CPUs "
                          "and CUDA GPUs)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA GPU is available (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that support it; fp32 on CPUs, where half-precision autocast is ~8x slower."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def half_on_cpu_note(precision: str, device: torch.device) -> str | None:
    """A line for `precision: fp16` or `bf16` on a CPU, where autocast emulates them: the run works, but at
    a fraction of fp32's speed (micro ViT, digits, 2-core CPU: fp16 66, bf16 389, fp32 723 images/s)."""
    if device.type != "cpu" or precision not in ("fp16", "bf16"):
        return None
    return (f"note: precision {precision} on a CPU is emulated, {'~10x' if precision == 'fp16' else '~2x'} slower "
            "than fp32 (it pays on a GPU); precision auto uses fp32 on a CPU")


def seed_everything(seed: int) -> None:
    """Model init, dropout/drop-path, shuffling, RandAugment (torch), Mixup (NumPy), erasing (random)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trainer:
    """Everything one run needs besides its data: built once by `setup` for `train` and for the probe."""

    cfg: TrainConfig
    model: nn.Module
    dtype: torch.dtype
    micro: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    teacher: nn.Module | None
    forward: nn.Module  # the model, or its torch.compile'd wrapper (same parameters) with `compile: true`
    # Gather and augment the next batches in a background thread while this one trains (`_prefetched`):
    # None: no thread; "ahead": up to PREFETCH_DEPTH batches ahead; "paced": the next batch while this
    # step's backward pass runs. Default: paced on a GPU when the config augments.
    prefetch: str | None = None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x)
        base = self.augment.train_loss(logits, y)
        if self.teacher is None:
            return base
        return distill_loss(logits, self.teacher(x), base, self.cfg)


def setup(cfg: TrainConfig, data: ImageData, dev: torch.device, steps_per_epoch: int, batch_size: int) -> Trainer:
    """Load the teacher, seed, then build the model, optimizer, schedule, loss scaler and augmentation of
    `cfg`. The teacher comes first so that its construction draws no random numbers from the seeded
    stream: a distilled run and the same run without a teacher share init, data order and augmentation."""
    teacher = load_teacher(cfg, data, dev) if cfg.teacher else None
    seed_everything(cfg.seed)
    model = build_model(cfg, data.channels, data.image_size, data.num_classes).to(dev)
    dtype = resolve_precision(cfg.precision, dev)
    micro = cfg.micro_batch_size or _default_micro_batch(model, batch_size, data, dev, dtype)
    optimizer = _optimizer(model, cfg, dev)
    # Compiled lazily at the first training step, so compile time lands in epoch 1's time and images/s.
    # Evaluation, monitors and checkpoints use the plain module (same parameters, unprefixed names).
    forward = torch.compile(model) if cfg.compile else model
    return Trainer(cfg, model, dtype, micro, optimizer, _scheduler(optimizer, cfg, steps_per_epoch),
                   torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16),
                   BatchAugment(cfg.aug_strength, data.num_classes, cfg.label_smoothing), teacher, forward,
                   prefetch="paced" if dev.type == "cuda" and cfg.aug_strength > 0 else None)


def train(cfg: TrainConfig, report: Report | None = None, *, data: ImageData | None = None, device: str = "auto",
          checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
          checkpoint_due: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Train `cfg`; call `report` once per epoch; return the final metrics, the best and the history.
    With `checkpoint_dir`, a checkpoint is written there after every epoch, or only after the epochs for
    which `checkpoint_due(epoch)` is true."""
    dev = resolve_device(device)
    data = data if data is not None else load_data(cfg)
    if cfg.batch_size > len(data.train_y):
        raise ConfigError(f"invalid value for 'batch_size': {cfg.batch_size} (must be <= the "
                          f"{len(data.train_y)} training images of {data.name!r})")
    steps_per_epoch = len(data.train_y) // cfg.batch_size
    run = setup(cfg, data, dev, steps_per_epoch, cfg.batch_size)
    model, micro = run.model, run.micro
    feed = Feed(data, dev, cfg.loader_workers)
    data_shape = [data.channels, data.image_size, data.num_classes]

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume_from is not None:
        start_epoch, history = load_checkpoint(resume_from, cfg, run, data.fingerprint())

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        stats = train_one_epoch(run, feed, cfg.batch_size, epoch, steps_per_epoch)
        _sync(dev)
        train_time = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, feed.val_batches(2 * micro), len(data.val_y), run.dtype)
        metrics = {"epoch": epoch, "train_loss": stats["loss"], "val_loss": val_loss, "val_acc": val_acc,
                   "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                   "grad_norm_max": stats["grad_norm_max"], "images_per_s": stats["images"] / train_time,
                   "epoch_time_s": time.perf_counter() - t0, "micro_batch_size": micro}
        if cfg.monitors:
            metrics.update(monitor.measure(model, normalize(feed.probe_images(monitor.PROBE_IMAGES))))
        history.append(metrics)
        if checkpoint_dir is not None and (checkpoint_due is None or checkpoint_due(epoch)):
            save_checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME, run, epoch, history, data_shape,
                            data.fingerprint())
        if report is not None:
            report(dict(metrics))
    best = max(history, key=lambda m: m["val_acc"]) if history else {}
    return {**(history[-1] if history else {}), "best_val_acc": best.get("val_acc"),
            "best_epoch": best.get("epoch"), "history": history, "model": model}


class Feed:
    """A dataset's batches on `dev`. In-memory images are moved to the device once and batches are
    gathered there; streamed images (`data.StreamedImages`) come through one DataLoader of `workers`
    processes for training and validation, pinned on a GPU machine and copied without a sync."""

    def __init__(self, data: ImageData, dev: torch.device, workers: int | None = None):
        self.dev, self.streamed = dev, data.streamed
        self.train_y, self.val_y = data.train_y.to(dev), data.val_y.to(dev)
        self.n_train = len(data.train_y)
        if not self.streamed:
            self.train_x, self.val_x = data.train_x.to(dev), data.val_x.to(dev)
            return
        from .data import StreamedImages

        self.val_source = data.val_x
        files = StreamedImages(data.train_x.paths + data.val_x.paths, data.train_x.gray, data.train_x.size)
        if workers is None:
            workers = min(8, torch.get_num_threads())
        self.plan = _BatchPlan()
        self.loader = files.loader(self.plan, workers, pin_memory=dev.type == "cuda")
        self._probe: torch.Tensor | None = None

    def train_batches(self, order: torch.Tensor, batch_size: int, steps: int):
        """(uint8 images, labels) of each of `steps` batches of `order` (indices into the training set)."""
        if not self.streamed:
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                yield self.train_x[idx], self.train_y[idx]
            return
        order = order.cpu()
        batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
        yield from self._stream(batches, self.train_y)

    def val_batches(self, batch_size: int):
        n = len(self.val_y)
        if not self.streamed:
            for start in range(0, n, batch_size):
                yield self.val_x[start:start + batch_size], self.val_y[start:start + batch_size]
            return
        batches = [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        yield from self._stream(batches, self.val_y, offset=self.n_train)

    def _stream(self, batches: list[torch.Tensor], labels: torch.Tensor, offset: int = 0):
        self.plan.batches = [(b + offset).tolist() for b in batches]
        try:
            for idx, images in zip(batches, self.loader):
                yield images.to(self.dev, non_blocking=True), labels[idx.to(self.dev)]
        except DataError as exc:
            # A worker's error arrives wrapped in its traceback text; keep the one line it raised.
            raise DataError(str(exc).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None

    def probe_images(self, n: int) -> torch.Tensor:
        """The first `n` validation images (the monitors' fixed probe batch)."""
        if not self.streamed:
            return self.val_x[:n]
        if self._probe is None:
            self._probe = self.val_source[:n].to(self.dev)
        return self._probe


class _BatchPlan:
    """A DataLoader batch sampler whose batches the feed sets before each pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_one_epoch(run: Trainer, feed: Feed, batch_size: int, epoch: int, steps: int,
                    finite: bool = True) -> dict[str, float]:
    """One epoch of `steps` optimizer steps. A non-finite loss raises NonFiniteLossError, unless `finite` is
    false (the throughput probes: a config that diverges, e.g. a fixed lr of 1e6, still has a speed, and its
    probe raised out of the search with a traceback)."""
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    model.train()
    dev = feed.dev
    order = torch.randperm(feed.n_train).to(dev)
    loss_sum = torch.zeros((), device=dev)
    grad_sum = torch.zeros((), device=dev)
    grad_max = torch.zeros((), device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else math.inf
    first_step = (epoch - 1) * steps + 1
    checked = first_step - 1
    rate = _schedule_rate(optimizer)
    pace = threading.Semaphore(1) if run.prefetch == "paced" else None  # one batch now, one per backward
    batches = _prefetched(run, feed, order, batch_size, steps, pace) if run.prefetch else (
        _augmented(run, images, labels) for images, labels in feed.train_batches(order, batch_size, steps))
    with contextlib.closing(batches):  # an error in a step stops the prefetching thread too
        for i, micro_batches in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            for j, (x, y, share) in enumerate(micro_batches):
                with _autocast(dev, run.dtype):
                    # Weighted by its share of the batch: k micro-batches sum to the batch's mean loss.
                    loss = run.loss(x, y) * share
                if pace is not None and j == len(micro_batches) - 1:
                    pace.release()  # the thread makes the next batch while this backward pass runs
                scaler.scale(loss).backward()
                loss_sum += loss.detach().float()
            rate = _schedule_rate(optimizer)  # the rate this step uses (step_update sets the next one's)
            _optimizer_step(run, params, clip, grad_sum, grad_max)
            step = first_step + i
            run.scheduler.step_update(step)
            if step - checked >= CHECK_EVERY_STEPS or i == steps - 1:
                if finite and not torch.isfinite(loss_sum):  # host-device sync, once per CHECK_EVERY_STEPS steps
                    raise NonFiniteLossError(epoch, checked + 1, step)
                checked = step
    return {"loss": loss_sum.item() / steps, "grad_norm": grad_sum.item() / steps,
            "grad_norm_max": grad_max.item(), "images": steps * batch_size, "lr": rate}


def _optimizer_step(run: Trainer, params: list[torch.Tensor], clip: float, grad_sum: torch.Tensor,
                    grad_max: torch.Tensor) -> None:
    """Unscale (fp16), clip to the global norm, step, and add the norm to the epoch's running figures."""
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, clip).detach()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    grad_sum += norm
    torch.maximum(grad_max, norm, out=grad_max)


def _augmented(run: Trainer, images: torch.Tensor, labels: torch.Tensor):
    """A batch's micro-batches, augmented one at a time as the step reaches them: (x, y, share of the batch)."""
    for chunk_x, chunk_y in zip(images.split(run.micro), labels.split(run.micro)):
        yield (*run.augment(chunk_x, chunk_y), len(chunk_y) / len(labels))


PREFETCH_DEPTH = 2  # batches gathered and augmented ahead of the step


def _prefetched(run: Trainer, feed: Feed, order: torch.Tensor, batch_size: int, steps: int,
                pace: threading.Semaphore | None = None):
    """`_augmented` batches made by a background thread: up to PREFETCH_DEPTH ahead of the caller, or,
    with `pace`, one batch for each release of it (the step loop releases it as its backward pass starts).

    A small ViT's step on a GPU is bound by the host (Python and kernel launches), and the augmentation
    adds launches of its own. torch releases the GIL while it dispatches an operation, and the training
    thread holds none while the backward pass runs in autograd's engine thread: there the thread's work
    overlaps the step's, with the least contention for the GIL. On a GPU the thread issues its work on
    a stream of its own and the step's stream waits for it by an event, not by blocking the host. The
    thread makes the augmentation's draws (torch's CPU generator, NumPy's for Mixup) in the same order as
    the steps would: the step draws none of them on a GPU (dropout and drop-path draw from the GPU's
    generator), so a seed gives the same batches."""
    done, ready = threading.Event(), queue.Queue(maxsize=PREFETCH_DEPTH)
    cuda = feed.dev.type == "cuda"
    main = torch.cuda.current_stream(feed.dev) if cuda else None
    side = torch.cuda.Stream(feed.dev) if cuda else None
    if cuda:
        side.wait_stream(main)  # the epoch's order, and anything else the thread reads, are written
        order.record_stream(side)  # read there, perhaps after the caller lets go of it

    def paced() -> bool:
        while pace is not None and not done.is_set():
            if pace.acquire(timeout=0.05):
                return True
        return not done.is_set()

    def hand_over(item) -> bool:
        while not done.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with contextlib.ExitStack() as on_device:
                if cuda:  # the device and the current stream are per thread
                    on_device.enter_context(torch.cuda.device(feed.dev))
                    on_device.enter_context(torch.cuda.stream(side))
                for images, labels in feed.train_batches(order, batch_size, steps):
                    if not paced():
                        return
                    micro_batches = list(_augmented(run, images, labels))
                    event = side.record_event() if cuda else None
                    if not hand_over((micro_batches, event)):
                        return
            hand_over(None)  # no more batches
        except BaseException as exc:  # noqa: BLE001 (raised again in the caller's thread)
            hand_over(exc)

    thread = threading.Thread(target=work, name="vitsearch-prefetch", daemon=True)
    thread.start()
    try:
        for _ in range(steps):
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            micro_batches, event = item
            if cuda:
                main.wait_event(event)
                for x, y, _share in micro_batches:  # made on the thread's stream, used on this one
                    x.record_stream(main)
                    y.record_stream(main)
            yield micro_batches
    finally:
        done.set()
        thread.join()


@torch.no_grad()
def evaluate(model: nn.Module, batches, n: int, dtype: torch.dtype) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the `n` un-augmented images of `batches` ((uint8 images, labels))."""
    model.eval()
    loss_sum = correct = None
    for images, y in batches:
        if loss_sum is None:
            loss_sum = torch.zeros((), device=images.device)
            correct = torch.zeros((), device=images.device)
        with _autocast(images.device, dtype):
            logits = model(normalize(images))
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / n, correct.item() / n


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _schedule_rate(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's rate: that of the top layers and the head. With `layer_decay` timm gives each layer's
    group its `lr_scale` (the first group, the embedding, is the most decayed), and the first group's rate
    was reported: a from-scratch vit_micro (depth 4) at layer_decay 0.75 showed 6.11e-05 for a schedule at
    2.58e-04 (0.75 ** 5 of it), and at depth 12 it would show 0.75 ** 13 = 0.024 of it."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # filter_bias_and_bn: no weight decay on 1-d parameters (biases, norms) nor on the names the model
    # lists in no_weight_decay() (pos_embed, cls_token).
    # Fused AdamW (one kernel over all parameters) on CUDA and CPU; multi-tensor elsewhere. torch's CPU
    # default updates one tensor at a time. On the CPU, for the quickstart's micro ViT, fused against
    # multi-tensor: 0.34 against 1.09 ms per step, whole 3-epoch runs 2.4-5.4 % faster (batch 128-32).
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return create_optimizer_v2(model, "adamw", lr=cfg.scaled_lr, weight_decay=cfg.weight_decay,
                               filter_bias_and_bn=True, layer_decay=cfg.layer_decay, **extra)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    from timm.scheduler import CosineLRScheduler

    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    peak = cfg.scaled_lr
    t_initial = max(1, total - warmup)
    # Where the warmup fills the run (warmup_epochs >= epochs), the cosine part is its one last step and
    # timm logs that a 1-step cosine "will have no effect": true, and not the user's concern.
    log = logging.getLogger(CosineLRScheduler.__module__)
    level = log.level
    if t_initial == 1:
        log.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=t_initial, lr_min=min(cfg.min_lr, peak), warmup_t=warmup,
                                 warmup_lr_init=min(1e-6, peak), warmup_prefix=True, t_in_epochs=False)
    finally:
        log.setLevel(level)


def _default_micro_batch(model: nn.Module, batch_size: int, data: ImageData, device: torch.device,
                         dtype: torch.dtype) -> int:
    """CPU: a fixed limit. GPU: the largest power-of-two share of the batch whose step fits in memory."""
    if device.type != "cuda":
        return min(batch_size, CPU_MICRO_BATCH)
    micro = batch_size
    x = torch.zeros(1, data.channels, data.image_size, data.image_size, device=device)
    while micro > 1:
        try:
            with _autocast(device, dtype):
                model(x.expand(micro, -1, -1, -1)).float().sum().backward()
            model.zero_grad(set_to_none=True)
            return micro
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            micro //= 2
    return 1


# --- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(path: Path, run: Trainer, epoch: int, history: list[dict[str, Any]],
                    data_shape: list[int], fingerprint: str | None = None) -> None:
    """Write atomically: a temporary file renamed over the old one, so a crash or a full disk leaves the
    previous one (and the latter is a one-line UserError). `data_shape` is [channels, image size,
    classes] of the data it was trained on (a teacher's input); `fingerprint` its split's
    (`ImageData.fingerprint`)."""
    state = {"config": run.cfg.to_dict(), "epoch": epoch, "history": history,
             "model": _on_cpu(run.model.state_dict()), "optimizer": _on_cpu(run.optimizer.state_dict()),
             "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": _rng_state(),
             "data_shape": data_shape, **({"data": fingerprint} if fingerprint else {})}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(buffer.getvalue(), path)


def _on_cpu(state: Any) -> Any:
    """`state` with its tensors in host memory, so that a checkpoint written on a GPU opens with a plain
    `torch.load` on a machine without one (torch.save would copy them to the host anyway)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return state


def load_checkpoint(path: str | Path, cfg: TrainConfig, run: Trainer,
                    fingerprint: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Restore a run saved by `save_checkpoint`; the config must match, and the data's `fingerprint` the
    one saved (checkpoints older than it have none). Returns (epoch, history)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # truncated or foreign files raise many different errors
        raise UserError(f"checkpoint {str(path)!r} cannot be read ({exc.__class__.__name__}); "
                        "it is truncated or not a vitsearch checkpoint") from None
    saved = state.get("config", {}) if isinstance(state, dict) else {}
    diffs = changed_keys(cfg, saved)
    if diffs:
        key = diffs[0]
        raise UserError(f"checkpoint {str(path)!r} was written for a different config: {key!r} is "
                        f"{saved.get(key)!r} there and {getattr(cfg, key)!r} here")
    if fingerprint and state.get("data") not in (None, fingerprint):
        raise UserError(f"checkpoint {str(path)!r} was trained on other data: {cfg.data!r} held {state['data']} "
                        f"then and holds {fingerprint} now (changed since), so its train/validation split would "
                        "differ; restore the data, or start a new run")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"])


def peek_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics stored in a checkpoint, without restoring anything (its tensors are mapped,
    not read: vit_small's checkpoint holds ~260 MB)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return list(state.get("history", []))


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
             "python": list(py_state), "python_version": version, "python_gauss": gauss_next}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def measure_window(cfg: TrainConfig, data: ImageData, device: str = "auto", *, start_at: float | None = None,
                   window_s: float = 3.0, warmup_steps: int = 2,
                   ready: Callable[[], Any] | None = None) -> tuple[float, float]:
    """Training images/s of `cfg` over a wall-clock window and the peak GPU memory in GB (0 on a CPU).
    After `warmup_steps` real steps it calls `ready` (a barrier's wait) and waits for `start_at` (a
    time.time() value), so that probes running at once on one GPU measure the same window (packing)."""
    dev = resolve_device(device)
    batch = min(cfg.batch_size, len(data.train_y))
    run = setup(cfg, data, dev, len(data.train_y) // batch, batch)
    n = min(len(data.train_y), batch * 4)
    feed = Feed(_head(data, n), dev)
    train_one_epoch(run, feed, batch, 1, warmup_steps, finite=False)
    _sync(dev)
    if ready is not None:
        ready()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < window_s:
        done += train_one_epoch(run, feed, batch, 1, n // batch, finite=False)["images"]  # ends with a sync
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else 0.0
    return done / elapsed, peak


def measure_throughput(cfg: TrainConfig, data: ImageData, device: str = "auto", steps: int = 3,
                       max_seconds: float = 5.0, stop: Callable[[], bool] | None = None,
                       fastest: bool = False) -> float:
    """Training images/s of `cfg` over up to `steps` real optimizer steps (after one warm-up step), fewer
    where they take more than `max_seconds` (at least one). On a CPU a step is one micro-batch (at most
    CPU_MICRO_BATCH images, or the config's `micro_batch_size`): a larger batch is accumulated from such
    micro-batches at the same images/s, and one step of it can take minutes (ViT-S at batch 1,024). With
    one CPU thread the images/s are per second of the thread's CPU time (see below). `stop()` true ends it
    after the step under way (the search stopped before its probe was done). `fastest`: the images/s of the
    fastest step instead of all of them (steps that waited on other threads of the process read slow)."""
    dev = resolve_device(device)
    batch = probe_batch(cfg, len(data.train_y), dev)
    run = setup(cfg, data, dev, steps + 1, batch)
    n = min(len(data.train_y), batch * (steps + 1))
    feed = Feed(_head(data, n), dev)
    train_one_epoch(run, feed, batch, 1, 1, finite=False)
    _sync(dev)
    # On a CPU with one thread every operation runs on the calling thread, so its CPU time is the
    # trial's own compute, whatever else the process and the machine do meanwhile. The search probes
    # while Ray starts and Ray Tune is imported on other threads: with another program busy on one of
    # the 2 cores, the wall clock read ~430 images/s and this clock ~1,800 (the quickstart's batch-128
    # trials train at ~1,850 on the quiet machine). Elsewhere (GPU, several threads) the wall clock.
    clock = time.thread_time if dev.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    t0, c0 = time.perf_counter(), clock()
    done, best = 0, 0.0
    for _ in range(max(1, n // batch - 1)):
        if stop is not None and stop():
            break
        c1 = clock()
        images = train_one_epoch(run, feed, batch, 1, 1, finite=False)["images"]
        _sync(dev)
        done, best = done + images, max(best, images / max(clock() - c1, 1e-9))
        if time.perf_counter() - t0 > max_seconds:
            break
    return best if fastest else done / max(clock() - c0, 1e-9)


def probe_batch(cfg: TrainConfig, n_train: int, dev: torch.device) -> int:
    """The batch `measure_throughput` steps with: the config's, on a CPU at most one micro-batch."""
    batch = min(cfg.batch_size, n_train)
    return min(batch, cfg.micro_batch_size or CPU_MICRO_BATCH) if dev.type == "cpu" else batch


def _head(data: ImageData, n: int) -> ImageData:
    """The first `n` training images in memory (read now where streamed), for the throughput probes."""
    return ImageData(data.name, data.train_x[:n], data.train_y[:n], data.val_x[:1], data.val_y[:1], data.classes)
