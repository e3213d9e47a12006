"""Trial packing on one GPU: aggregate training throughput of k trials sharing the GPU against one.

    python bench/packing.py [--runner auto|ray|processes] [--only quickstart|cifar]   # needs a CUDA GPU

Two trial sizes, each measured with k = 1, 2, 4 (8 where it fits) concurrent trials as Ray tasks
holding 1/k of the GPU (vitsearch.packing.measure: common start, fixed window, real trainer with bf16
autocast, fused AdamW, data on the GPU, full augmentation at aug_strength 0.5), or, where Ray is not
installed (`--runner auto`; the lent GPU machines' image has torch and timm but no Ray, and Ray's wheel
is larger than what travels there), as k spawned processes started together by a barrier
(vitsearch.packing.measure_in_processes): the same k processes on the GPU, without Ray's scheduler:
- quickstart-sized: the quickstart's micro ViT (width 64, depth 4) on digits at 16 px, batch 128;
- CIFAR-sized: ViT-Ti (width 192, depth 12, 3 heads) at 32 px, patch 4, batch 256, on 10,000 random
  CIFAR-shaped images (3 x 32 x 32, 10 classes; throughput does not depend on pixel values).
Prints aggregate images/s, the ratio to k = 1 and the packing vitsearch's `gpu: auto` would choose.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import argparse
    import importlib.util

    import torch

    from vitsearch.config import TrainConfig
    from vitsearch.data import ImageData, load_data
    from vitsearch.packing import CANDIDATES, MEMORY_SHARE, choose, measure, measure_in_processes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", choices=("auto", "ray", "processes"), default="auto",
                    help="auto: Ray tasks where Ray is installed, else spawned processes")
    ap.add_argument("--only", choices=("quickstart", "cifar"), help="measure one of the two trial sizes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/packing.py measures GPU packing and needs a CUDA GPU; none is available here.")
        return 0
    runner = args.runner
    if runner == "auto":
        runner = "ray" if importlib.util.find_spec("ray") is not None else "processes"
    if runner == "ray":
        import ray

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    measure_k = measure if runner == "ray" else measure_in_processes  # same arguments: data or Ray's reference
    quick = TrainConfig(model="vit_micro", data="digits", image_size=16, patch_size=4, batch_size=128,
                        lr_scaling="none", aug_strength=0.5)
    cifar = TrainConfig(model="vit_tiny", patch_size=4, batch_size=256, aug_strength=0.5)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10_500, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (10_500,), generator=g)
    fake = ImageData("cifar-shaped random", images[:10_000], labels[:10_000], images[10_000:], labels[10_000:],
                     [str(i) for i in range(10)])
    total = torch.cuda.get_device_properties(0).total_memory / 1e9
    print(f"GPU: {torch.cuda.get_device_name(0)}, {total:.0f} GB; trials run as {runner}", flush=True)
    sizes = {"quickstart": ("quickstart-sized micro ViT, 16 px, batch 128", quick, lambda: load_data(quick)),
             "cifar": ("CIFAR-sized ViT-Ti, 32 px / patch 4, batch 256", cifar, lambda: fake)}
    for label, cfg, load in [sizes[args.only]] if args.only else sizes.values():
        data = load()
        ref = ray.put(data) if runner == "ray" else data
        rows = []
        for k in CANDIDATES:
            if rows and k * rows[0]["peak_memory_gb"] > MEMORY_SHARE * total:
                break
            rows.append(measure_k(cfg, ref, "cuda", k))
        base = rows[0]["aggregate_img_s"]
        print(f"\n{label}")
        print("| trials per GPU | aggregate img/s | vs 1 | peak memory per trial |")
        print("|---|---|---|---|")
        for row in rows:
            print(f"| {row['k']} | {row['aggregate_img_s']:,.0f} | {row['aggregate_img_s'] / base:.2f}x "
                  f"| {row['peak_memory_gb']:.2f} GB |")
        print(f"gpu: auto would choose: {choose(rows, total).describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
