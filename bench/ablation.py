"""Ablation of the playbook options on a Fashion-MNIST subset, at equal epochs and seeds.

    python bench/ablation.py                      # 2 seeds, 5,000 training images, 15 epochs
    python bench/ablation.py --seeds 3 --epochs 30

Every variant changes one key of the same micro-ViT baseline (width 64, depth 4, 4 heads, 28 px, patch 4
-> 7x7 tokens + CLS) and is trained with `train()` for each seed: patchify vs ConvStem, full vs Linformer
attention, without vs with distillation (hard and soft) from an EfficientNet-Lite0 teacher fine-tuned
from ImageNet weights (configs/teacher_effnet_lite0.yaml, one teacher per seed so that its
train/validation split is the student's), fp32 vs bf16. It prints final validation accuracy (mean ±
sample std over seeds), its difference to the baseline, and training images/s with its ratio to the
baseline measured in the same run. On a CPU the speed column says little (bf16 autocast is emulated,
attention at 50 tokens is a small share of the work); run it on a GPU for speed.
Results go to <out>/ablation.parquet.

    python bench/ablation.py --attention-speed    # full vs Linformer training img/s at 50-785 tokens

measures only speed: the same micro ViT on random images at 28, 56 and 112 px with patch 4 (50, 197
and 785 tokens), full attention against Linformer (k = n/4), alternating, median of 3 rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from vitsearch.config import TrainConfig, load_config  # noqa: E402
from vitsearch.data import load_data  # noqa: E402
from vitsearch.files import write_parquet  # noqa: E402
from vitsearch.train import CHECKPOINT_NAME, train  # noqa: E402

BASE = dict(model="vit_micro", data="fashion_mnist", val_fraction=0.05, batch_size=64, lr=2e-3, lr_scaling="none",
            warmup_epochs=1, weight_decay=0.05, aug_strength=0.15, precision="fp32")
VARIANTS = {
    "baseline (patchify, full attention, fp32)": {},
    "ConvStem": {"stem": "conv"},
    "Linformer (k = 12 of 50 tokens)": {"attention": "linformer"},
    "hard distillation (DeiT, w 0.5)": {"distill_mode": "hard", "teacher": True},
    "soft distillation (tau 3, w 0.1)": {"distill_mode": "soft", "teacher": True},
    "bf16 autocast": {"precision": "bf16"},
}


def teacher_for(seed: int, args) -> tuple[Path, float]:
    """The EfficientNet-Lite0 teacher of this seed's split: trained once, then reused from its folder."""
    cfg = load_config(ROOT / "configs" / "teacher_effnet_lite0.yaml").replace(
        seed=seed, data_subset=args.subset, val_fraction=BASE["val_fraction"], epochs=args.teacher_epochs)
    folder = Path(args.out) / f"teacher-seed{seed}"
    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.is_file():
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["config"] == cfg.to_dict() and state["epoch"] == cfg.epochs:
            return folder, state["history"][-1]["val_acc"]
    t0 = time.perf_counter()
    result = train(cfg, device=args.device, checkpoint_dir=folder)
    print(f"teacher seed {seed}: EfficientNet-Lite0 from ImageNet weights, {cfg.epochs} epochs at "
          f"{cfg.image_size} px: val_acc {result['val_acc']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return folder, result["val_acc"]


def attention_speed(device: str) -> None:
    import torch

    from vitsearch.data import ImageData
    from vitsearch.model import linformer_k
    from vitsearch.train import measure_throughput

    print("| tokens | full attention img/s | Linformer img/s (k) | Linformer / full |")
    print("|---|---|---|---|")
    for size in (28, 56, 112):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (1100, 1, size, size), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (1100,), generator=g)
        data = ImageData("random", images[:1024], labels[:1024], images[1024:], labels[1024:],
                         [str(i) for i in range(10)])
        cfg = TrainConfig.from_dict({**BASE, "patch_size": 4, "image_size": size, "aug_strength": 0.0})
        speeds: dict[str, list[float]] = {"full": [], "linformer": []}
        for _ in range(3):
            for attention in speeds:
                speeds[attention].append(measure_throughput(cfg.replace(attention=attention), data, device, steps=3))
        full, lin = (statistics.median(v) for v in speeds.values())
        tokens = (size // 4) ** 2 + 1
        print(f"| {tokens} | {full:.0f} | {lin:.0f} ({linformer_k(tokens, None)}) | {lin / full:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--subset", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", action="append", help="run only variants whose name contains this")
    parser.add_argument("--out", default=str(ROOT / "results" / "ablation"))
    parser.add_argument("--attention-speed", action="store_true", help="only full vs Linformer speed by tokens")
    args = parser.parse_args()
    if args.attention_speed:
        attention_speed(args.device)
        return

    rows = []
    teachers = {}
    variants = {k: v for k, v in VARIANTS.items() if not args.only or any(o in k for o in args.only)}
    if any(v.get("teacher") for v in variants.values()):
        teachers = {seed: teacher_for(seed, args) for seed in range(args.seeds)}
    for seed in range(args.seeds):
        base = TrainConfig.from_dict({**BASE, "seed": seed, "data_subset": args.subset, "epochs": args.epochs})
        data = load_data(base)
        for name, change in variants.items():
            change = {**change, "teacher": str(teachers[seed][0])} if change.get("teacher") else change
            cfg = base.replace(**change)
            t0 = time.perf_counter()
            result = train(cfg, data=data, device=args.device)
            wall = time.perf_counter() - t0
            speed = statistics.mean(h["images_per_s"] for h in result["history"])
            rows.append({"variant": name, "seed": seed, "final_val_acc": result["val_acc"],
                         "best_val_acc": result["best_val_acc"], "images_per_s": speed, "wall_s": wall,
                         "teacher_val_acc": teachers[seed][1] if change.get("teacher") else None})
            print(f"{name:<42} seed {seed}  val_acc {result['val_acc']:.4f}  {speed:7.0f} img/s  {wall:5.0f} s",
                  flush=True)
    runs = pd.DataFrame(rows)
    write_parquet(runs, Path(args.out) / "ablation.parquet")

    base_name = next(iter(variants))
    base_acc = runs[runs["variant"] == base_name]["final_val_acc"].mean()
    base_speed = runs[runs["variant"] == base_name]["images_per_s"].mean()
    print(f"\nFashion-MNIST, {args.subset} training / {len(data.val_y)} validation images, {args.epochs} epochs, "
          f"seeds 0-{args.seeds - 1}, device {args.device}")
    if teachers:
        accs = [acc for _, acc in teachers.values()]
        print(f"teachers (EfficientNet-Lite0, ImageNet weights, {args.teacher_epochs} epochs): val_acc "
              + ", ".join(f"{a:.4f}" for a in accs))
    print("\n| variant | final val_acc (mean ± std) | vs baseline | train img/s | speed vs baseline |")
    print("|---|---|---|---|---|")
    for name in variants:
        part = runs[runs["variant"] == name]
        acc, spread = part["final_val_acc"].mean(), part["final_val_acc"].std(ddof=1) if len(part) > 1 else 0.0
        speed = part["images_per_s"].mean()
        print(f"| {name} | {acc:.4f} ± {spread:.4f} | {acc - base_acc:+.4f} | {speed:.0f} "
              f"| {speed / base_speed:.2f}x |")


if __name__ == "__main__":
    main()
