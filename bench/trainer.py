"""Trainer overhead: vitsearch's `train()` against a plain timm loop, same model, data, batch, precision.

    python bench/trainer.py [--model vit_micro] [--image-size 16] [--batch 64] [--epochs 3] [--rounds 3]
                            [--device auto] [--precision fp32] [--compile]

Both train the same timm ViT on the same in-memory digits tensors with augmentation off: the plain loop
is AdamW + cross-entropy + clip_grad_norm_ + a cosine LambdaLR, nothing else. The two alternate for
`--rounds` rounds (the machine is shared and noisy) and the median images/s of each over epochs 2..
(epoch 1 is warm-up, and compilation with `--compile`, whose time is printed) is compared.
Prints images/s of each and the ratio vitsearch / plain (>= 1.0 means the trainer costs no speed).

`--synthetic N` trains on N random RGB images (1,000 classes) held in device memory instead of
`--data` (the reference for ViT-S/16 at 224 px: `--model vit_small --synthetic 8192 --image-size 224
--patch-size 16 --batch 256 --precision bf16`). With `--real-vs-synthetic`, instead: the trainer on
`--data` with `--aug-strength` (full augmentation: 1.0) against the same trainer on synthetic images of
the same shape without augmentation, i.e. what the data path and augmentation cost.

With `--stream-vs-memory`, instead: the trainer on an image folder read per batch by
`--loader-workers` DataLoader processes (`loader: stream`) against the same folder decoded into memory
(`loader: memory`), both with `--aug-strength`. A `--data` that is no image folder (e.g.
fashion_mnist) is first written out as one PNG per image into a temporary class-folder tree.

With `--monitors`, instead: the wall time of whole `train()` runs with `monitors: false` and `true`
(alternating rounds, medians), i.e. what the per-epoch monitors (CLS norm, attention entropy, MLP
sparsity on 64 fixed validation images) add to a run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitsearch.augment import normalize
from vitsearch.config import TrainConfig
from vitsearch.data import ImageData, load_data
from vitsearch.model import build_model
from vitsearch.train import resolve_device, resolve_precision, train


def plain_loop(cfg: TrainConfig, data, device: torch.device, dtype: torch.dtype) -> float:
    """The loop a user writes from timm's docs; returns training images/s (evaluation excluded)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.channels, data.image_size, data.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.scaled_lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    steps = len(data.train_y) // cfg.batch_size
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    images, seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y_all), device=device)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(model(normalize(x_all[idx])), y_all[idx],
                                                         label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
        loss.item()  # the plain loop's one sync per epoch, as the trainer's
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0 or cfg.epochs == 1:  # epoch 1 is warm-up, as for the trainer (mean_images_per_s)
            seconds += time.perf_counter() - t0
            images += steps * cfg.batch_size
    return images / seconds


def force_prefetch(mode: str | None) -> None:
    """Every Trainer that `train` builds from now on for a config that augments gets `prefetch = mode`."""
    import vitsearch.train as trainer

    setup = trainer.setup

    def with_mode(cfg, *args, **kwargs):
        run = setup(cfg, *args, **kwargs)
        if cfg.aug_strength > 0:
            run.prefetch = mode
        return run

    trainer.setup = with_mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_micro")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--monitors", action="store_true", help="time train() with monitors off against on")
    ap.add_argument("--synthetic", type=int, metavar="N", help="N random RGB images instead of --data")
    ap.add_argument("--aug-strength", type=float, default=0.0)
    ap.add_argument("--real-vs-synthetic", action="store_true",
                    help="the trainer on --data with --aug-strength against synthetic data without augmentation")
    ap.add_argument("--stream-vs-memory", action="store_true",
                    help="an image folder streamed by --loader-workers processes against the same folder in memory")
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--subset", type=int, help="data_subset: only this many training images")
    ap.add_argument("--prefetch", choices=("default", "off", "paced", "ahead"), default="default",
                    help="the prefetching thread (Trainer.prefetch) of vitsearch's trainer where it augments; "
                         "default: the trainer's choice (paced on a GPU)")
    ap.add_argument("--compile", action="store_true",
                    help="vitsearch's trainer with compile: true (the plain loop stays eager, as a user writes it)")
    args = ap.parse_args()
    cfg = TrainConfig.from_dict(dict(model=args.model, data=args.data, image_size=args.image_size,
                                     patch_size=args.patch_size, batch_size=args.batch, epochs=args.epochs,
                                     warmup_epochs=0, aug_strength=0.0, drop_path=0.0,
                                     precision=args.precision, micro_batch_size=args.batch,
                                     data_subset=args.subset))
    ours_cfg = cfg.replace(compile=args.compile)
    if args.prefetch != "default":
        force_prefetch(None if args.prefetch == "off" else args.prefetch)
    device = resolve_device(args.device)
    dtype = resolve_precision(cfg.precision, device)
    if args.stream_vs_memory:
        return stream_vs_memory(cfg, args)
    data = synthetic_data(args.synthetic, args.image_size, 3, 1000) if args.synthetic else load_data(cfg)
    if args.monitors:
        return monitors_cost(cfg, data, args)
    if args.real_vs_synthetic:
        return real_vs_synthetic(cfg, data, args)
    ours, plain, first = [], [], []
    for _ in range(args.rounds):
        history = train(ours_cfg, data=data, device=args.device)["history"]
        first.append(history[0]["epoch_time_s"])
        ours.append(later_images_per_s(history))
        plain.append(plain_loop(cfg, data, device, dtype))
    ours_med, plain_med = statistics.median(ours), statistics.median(plain)
    print(f"device {device.type}, {args.model} {args.image_size}px patch {args.patch_size}, batch {args.batch}, "
          f"{args.precision}, {args.epochs} epochs x {args.rounds} rounds (epoch 1 not counted), threads "
          f"{torch.get_num_threads()}, compile {args.compile}; vitsearch's epoch 1 took "
          f"{statistics.median(first):.1f} s")
    print(f"vitsearch trainer : {ours_med:9.0f} img/s   (rounds: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"plain timm loop   : {plain_med:9.0f} img/s   (rounds: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"ratio vitsearch/plain: {ours_med / plain_med:.3f}")
    print(json.dumps({"vitsearch_img_s": round(ours_med, 1), "plain_img_s": round(plain_med, 1),
                      "ratio": round(ours_med / plain_med, 3)}))


def synthetic_data(n: int, size: int, channels: int, classes: int) -> ImageData:
    """Random uint8 images and labels, split 90/10: throughput only, nothing to learn."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    cut = n - max(1, n // 10)
    return ImageData("synthetic", images[:cut], labels[:cut], images[cut:], labels[cut:],
                     [str(i) for i in range(classes)])


def mean_images_per_s(cfg: TrainConfig, data, device: str) -> float:
    return later_images_per_s(train(cfg, data=data, device=device)["history"])


def later_images_per_s(history: list[dict]) -> float:
    later = history[1:] or history  # epoch 1 carries warm-up (and compilation with `compile: true`)
    return sum(h["images_per_s"] for h in later) / len(later)


def alternating_medians(args, *runs: tuple[TrainConfig, ImageData]) -> list[float]:
    """Median images/s of each (config, data) run over `args.rounds` rounds, the runs alternating."""
    seen: list[list[float]] = [[] for _ in runs]
    for _ in range(args.rounds):
        for values, (cfg, data) in zip(seen, runs):
            values.append(mean_images_per_s(cfg, data, args.device))
    return [statistics.median(values) for values in seen]


def real_vs_synthetic(cfg: TrainConfig, data, args) -> None:
    real_cfg = cfg.replace(aug_strength=args.aug_strength)
    fake = synthetic_data(len(data.train_y) + len(data.val_y), data.image_size, data.channels, data.num_classes)
    real_med, synth_med = alternating_medians(args, (real_cfg, data), (cfg, fake))
    print(f"device {args.device}, {args.model} {data.image_size}px, batch {args.batch}, {args.precision}, "
          f"{data.name}: {len(data.train_y)} training images")
    print(f"{data.name}, aug_strength {args.aug_strength}: {real_med:9.0f} img/s   synthetic, no augmentation: "
          f"{synth_med:9.0f} img/s   ratio real/synthetic {real_med / synth_med:.3f}")


def stream_vs_memory(cfg: TrainConfig, args) -> None:
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="vitsearch-bench-") as tmp:
        if cfg.data_scheme != "imagefolder":
            source = load_data(cfg.replace(image_size=None, data_subset=None))
            images = torch.cat([source.train_x, source.val_x])
            labels = torch.cat([source.train_y, source.val_y]).tolist()
            for i, (image, label) in enumerate(zip(images, labels)):
                folder = Path(tmp) / source.classes[label]
                folder.mkdir(exist_ok=True)
                array = image.permute(1, 2, 0).numpy()
                Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i}.png")
            cfg = cfg.replace(data=f"imagefolder:{tmp}")
        memory_cfg = cfg.replace(aug_strength=args.aug_strength, loader="memory")
        stream_cfg = memory_cfg.replace(loader="stream", loader_workers=args.loader_workers)
        memory_data, stream_data = load_data(memory_cfg), load_data(stream_cfg)
        memory_med, stream_med = alternating_medians(args, (memory_cfg, memory_data), (stream_cfg, stream_data))
    print(f"device {args.device}, {args.model} {memory_data.image_size}px, batch {args.batch}, {args.precision}, "
          f"aug_strength {args.aug_strength}, {len(memory_data.train_y)} training images, threads "
          f"{torch.get_num_threads()}")
    print(f"streamed ({args.loader_workers} workers): {stream_med:9.0f} img/s   in memory: {memory_med:9.0f} img/s   "
          f"ratio streamed/memory {stream_med / memory_med:.3f}")


def monitors_cost(cfg: TrainConfig, data, args) -> None:
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            t0 = time.perf_counter()
            train(cfg.replace(monitors=on), data=data, device=args.device)
            seconds[on].append(time.perf_counter() - t0)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"device {args.device}, {args.model} {args.image_size}px, batch {args.batch}, {args.epochs} epochs x "
          f"{args.rounds} rounds, {len(data.train_y)} training images")
    extra_ms = (on - off) / args.epochs * 1000
    print(f"train() with monitors off: {off:.2f} s, on: {on:.2f} s (per epoch +{extra_ms:.0f} ms); "
          f"ratio on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
