"""Does the trainer's prefetching thread pay on this machine? Training steps with and without it, with
full augmentation and without any, alternated in one process (host-bound steps drift by several % over a
run, so each figure is the median over rounds that visit every variant in turn).

    python bench/prefetch.py [--data fashion_mnist:.data/fashion-mnist] [--model vit_tiny] [--image-size 32]
                             [--patch-size 4] [--batch 256] [--steps 40] [--rounds 6] [--trace-dir DIR]

Variants (ms per step of the trainer's `train_one_epoch`, bf16 on a GPU):
- thread / no thread (`Trainer.prefetch` "paced" / None), each at `--aug-strength` and at 0;
- the thread running ahead instead (`Trainer.prefetch` "ahead"), at `--aug-strength`;
- without the thread, each part of the augmentation alone (RandAugment, Mixup/CutMix, erasing).
With `--trace-dir`, also a torch.profiler trace (host and GPU, Chrome's format) of 5 steps with full
augmentation, with and without the thread: where the training thread waits, and on what.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_profile import keep_only, step_arguments, step_config  # noqa: E402

from vitsearch.data import load_data  # noqa: E402
from vitsearch.train import PREFETCH_DEPTH, Feed, _sync, resolve_device, setup, train_one_epoch  # noqa: E402


def main() -> None:
    ap = step_arguments(__doc__, 40)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--trace-dir", type=Path)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cfg = step_config(args)
    data = load_data(cfg)
    steps = min(args.steps, len(data.train_y) // args.batch)
    feed = Feed(data, dev)
    variants = {}
    for name, strength, prefetch, only in (("thread, augmented", cfg.aug_strength, "paced", None),
                                           ("no thread, augmented", cfg.aug_strength, None, None),
                                           ("thread, not augmented", 0.0, "paced", None),
                                           ("no thread, not augmented", 0.0, None, None),
                                           ("no thread, RandAugment alone", cfg.aug_strength, None, "randaug"),
                                           ("no thread, Mixup/CutMix alone", cfg.aug_strength, None, "mixup"),
                                           ("no thread, erasing alone", cfg.aug_strength, None, "erasing"),
                                           ("thread ahead, augmented", cfg.aug_strength, "ahead", None)):
        run = setup(cfg.replace(aug_strength=strength), data, dev, steps, cfg.batch_size)
        run.prefetch = prefetch
        if only is not None:
            keep_only(run.augment, only)
        train_one_epoch(run, feed, cfg.batch_size, 1, 3)  # warm-up
        variants[name] = run
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(dev)
            t0 = time.perf_counter()
            train_one_epoch(variants[name], feed, cfg.batch_size, 1, steps)  # ends with .item()
            times[name].append((time.perf_counter() - t0) / steps * 1000)
    print(f"device {dev}, {args.model} {data.image_size}px patch {args.patch_size}, batch {args.batch}, "
          f"{data.name}, aug_strength {args.aug_strength}, {steps} steps x {args.rounds} rounds")
    ms = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:32s} {ms[name]:7.2f} ms per step   (rounds {min(t):.2f}-{max(t):.2f})")
    base = ms["no thread, not augmented"]
    print(f"augmented / not augmented throughput: {ms['thread, not augmented'] / ms['thread, augmented']:.3f} with "
          f"the thread, {base / ms['no thread, augmented']:.3f} without; best of each: "
          f"{min(ms['thread, not augmented'], base) / min(ms['thread, augmented'], ms['no thread, augmented']):.3f}")
    print(f"the thread's speed-up: {ms['no thread, augmented'] / ms['thread, augmented']:.3f}x augmented, "
          f"{base / ms['thread, not augmented']:.3f}x not augmented")
    print(f"thread paced (the next batch during the backward pass) / ahead ({PREFETCH_DEPTH} batches): "
          f"{ms['thread ahead, augmented'] / ms['thread, augmented']:.3f}x as fast")
    print("ms each part adds without the thread: " + ", ".join(
        f"{name.split(', ')[1].replace(' alone', '')} {ms[name] - base:.2f}" for name in names[4:7])
          + f"; all together {ms['no thread, augmented'] - base:.2f}")
    if args.trace_dir is not None and dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        args.trace_dir.mkdir(parents=True, exist_ok=True)
        for name, file in (("thread, augmented", "trace_thread.json"), ("no thread, augmented", "trace_serial.json")):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                train_one_epoch(variants[name], feed, cfg.batch_size, 1, 5)
                _sync(dev)
            prof.export_chrome_trace(str(args.trace_dir / file))
            print(f"trace of 5 steps, {name}: {args.trace_dir / file}")


if __name__ == "__main__":
    main()
