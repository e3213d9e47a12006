"""Where a training step's time goes on a GPU: augmentation alone, whole steps with and without it, how
busy the GPU is, and which lines make the host wait for the GPU (synchronising calls).

    python bench/gpu_profile.py [--data fashion_mnist:.data/fashion-mnist] [--model vit_tiny]
                                [--image-size 32] [--patch-size 4] [--batch 256] [--aug-strength 1.0]

Prints, for the config given (default: the CIFAR-sized ViT-Ti of bench/packing.py on real data):
- augmentation alone: ms per batch (median of 30 calls, each ended by a synchronisation), as the trainer
  runs it (batched on a GPU: `augment.randaugment_batched`, `augment.erase_batched`) and unbatched
  (torchvision's RandAugment ops per (op, sign) drawn, timm's erasing per image);
- whole training steps (the trainer's `train_one_epoch`, bf16 on a GPU) with augmentation, batched and
  unbatched, and without: ms per step, medians of 3 timed passes of 30 steps; on a GPU also without the
  prefetching thread (augmentation on the training thread), and what each part of the augmentation
  (RandAugment, Mixup/CutMix, erasing) adds to such a step;
- GPU busy: the summed time of the GPU's kernels over 20 steps against their wall time (torch.profiler);
  well under 100 % means the step waits on the host (Python, kernel launches, synchronisations);
- synchronising calls over 10 steps (torch.cuda.set_sync_debug_mode), by source line.
On a CPU only the first two and the steps with the thread's default (the rest need CUDA).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitsearch.config import TrainConfig  # noqa: E402
from vitsearch.data import load_data  # noqa: E402
from vitsearch.train import Feed, _sync, resolve_device, setup, train_one_epoch  # noqa: E402


def steps_ms(cfg, data, dev, steps: int, passes: int = 3, batched: bool | None = None,
             prefetch: str | None = "default", only: str | None = None) -> float:
    """Median ms per training step over `passes` passes of `steps` steps (after a warm-up pass).
    `prefetch`: the background thread's mode (`Trainer.prefetch`; None: off); `only`: keep
    one part of the augmentation (randaug, mixup or erasing) and turn the others off."""
    run = setup(cfg, data, dev, steps, cfg.batch_size)
    run.augment.batched = batched
    if prefetch != "default":
        run.prefetch = prefetch
    if only is not None:
        keep_only(run.augment, only)
    feed = Feed(data, dev)
    times = []
    for i in range(passes + 1):
        _sync(dev)
        t0 = time.perf_counter()
        train_one_epoch(run, feed, cfg.batch_size, 1, steps)  # ends with .item(): synchronised
        if i:
            times.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(times)


def keep_only(augment, part: str) -> None:
    """Turn off every part of `augment` (a BatchAugment) but `part`: randaug, mixup or erasing."""
    for name in ("randaug", "mixup", "erasing"):
        if name != part:
            setattr(augment, name, None)
    if augment.mixup is None:  # hard labels again
        augment.train_loss = torch.nn.CrossEntropyLoss(label_smoothing=augment.label_smoothing)


def step_arguments(doc: str, steps: int) -> argparse.ArgumentParser:
    """The options of the step benchmarks (this one and bench/prefetch.py): the default config is the
    CIFAR-sized ViT-Ti of bench/packing.py with full augmentation."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--aug-strength", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--device", default="auto")
    return ap


def step_config(args) -> TrainConfig:
    """One epoch of `args.steps` steps (at least 2) of one micro-batch each, no warm-up."""
    return TrainConfig.from_dict(dict(model=args.model, data=args.data, image_size=args.image_size,
                                      patch_size=args.patch_size, batch_size=args.batch, epochs=1, warmup_epochs=0,
                                      aug_strength=args.aug_strength, micro_batch_size=args.batch,
                                      data_subset=max(args.batch * args.steps, 2 * args.batch)))


def main() -> None:
    args = step_arguments(__doc__, 30).parse_args()
    dev = resolve_device(args.device)
    cfg = step_config(args)
    data = load_data(cfg)
    run = setup(cfg, data, dev, 1, cfg.batch_size)
    x, y = data.train_x[:args.batch].to(dev), data.train_y[:args.batch].to(dev)
    aug_ms = {}
    for batched in (None, False):  # None: the default (batched on a GPU); False: torchvision's ops per (op, sign)
        run.augment.batched = batched
        times = []
        for i in range(31):
            _sync(dev)
            t0 = time.perf_counter()
            run.augment(x, y)
            _sync(dev)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
        aug_ms[batched] = statistics.median(times)
    bare = cfg.replace(aug_strength=0.0)
    without = steps_ms(bare, data, dev, args.steps)
    with_aug = steps_ms(cfg, data, dev, args.steps)
    unbatched = steps_ms(cfg, data, dev, args.steps, batched=False)
    print(f"device {dev}, {args.model} {data.image_size}px patch {args.patch_size}, batch {args.batch}, "
          f"{run.dtype}, {data.name}, aug_strength {args.aug_strength}")
    print(f"augmentation alone: {aug_ms[None]:.2f} ms per batch ({aug_ms[False]:.2f} ms unbatched)")
    print(f"training step: {with_aug:.2f} ms with augmentation ({unbatched:.2f} ms unbatched), {without:.2f} ms "
          f"without; throughput with / without augmentation: {without / with_aug:.3f} "
          f"({without / unbatched:.3f} unbatched)")
    if dev.type != "cuda":
        return
    # The same steps without the prefetching thread (augmentation on the training thread), and what each
    # part of the augmentation adds to a step there.
    serial = steps_ms(cfg, data, dev, args.steps, prefetch=None)
    serial_without = steps_ms(bare, data, dev, args.steps, prefetch=None)
    print(f"training step without the prefetching thread: {serial:.2f} ms with augmentation, {serial_without:.2f} "
          f"ms without; throughput with / without augmentation: {serial_without / serial:.3f}; the thread "
          f"makes steps with augmentation {serial / with_aug:.3f}x as fast")
    parts = {part: steps_ms(cfg, data, dev, args.steps, prefetch=None, only=part) - serial_without
             for part in ("randaug", "mixup", "erasing")}
    print("ms each part adds to a step without the thread: "
          + ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items())
          + f" (sum {sum(parts.values()):.2f}, all together {serial - serial_without:.2f})")
    for part in (gpu_busy, sync_sources):
        try:
            part(cfg, data, dev, args)
        except Exception as exc:  # noqa: BLE001 (a diagnostic: report and go on)
            print(f"{part.__name__} failed: {exc.__class__.__name__}: {exc}")


def gpu_busy(cfg, data, dev, args) -> None:
    for strength in (args.aug_strength, 0.0):
        c = cfg.replace(aug_strength=strength)
        r, feed = setup(c, data, dev, 20, c.batch_size), Feed(data, dev)
        train_one_epoch(r, feed, c.batch_size, 1, 3)
        _sync(dev)
        from torch.profiler import ProfilerActivity, profile

        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            train_one_epoch(r, feed, c.batch_size, 1, 20)
            _sync(dev)
        wall = time.perf_counter() - t0
        kernels = sum(e.device_time_total for e in prof.key_averages()
                      if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
        print(f"aug_strength {strength}: GPU kernels {kernels * 1000 / 20:.2f} ms per step of "
              f"{wall * 1000 / 20:.2f} ms wall (profiled): GPU busy {kernels / wall:.0%}")


def sync_sources(cfg, data, dev, args) -> None:
    r, feed = setup(cfg, data, dev, 10, cfg.batch_size), Feed(data, dev)
    train_one_epoch(r, feed, cfg.batch_size, 1, 2)
    _sync(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(r, feed, cfg.batch_size, 1, 10)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sources = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                  if "synchroniz" in str(w.message))
    print(f"synchronising calls in 10 steps: {sum(sources.values())}")
    for source, count in sources.most_common(12):
        print(f"  {count:5d}  {source}")


if __name__ == "__main__":
    main()
