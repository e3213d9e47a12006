#!/usr/bin/env bash
# Every GPU figure of the performance issue in one run (at most 9.7 min: 100+90+80+110+120+80 s). Run as a
# whole on an H100 on 2026-11-26 with 150 s for both packing sizes in one step: 6.4 min, and that step ran out
# of time after the quickstart-sized trials (the CIFAR-sized ones alone took 92 s). The CIFAR size, the
# target's, now comes first in a step of its own; this layout ran as a whole on an H100 on 2026-11-27 in 367 s:
# the commands of the README's benchmark section, each under its own time limit, each log written to
# OUT_DIR as it runs, and a summary of their result lines at the end.
#
#   bash bench/gpu_checks.sh [OUT_DIR]          # default OUT_DIR: gpu-checks
#
# Needs python3 with torch (CUDA), timm, torchvision, numpy, pyyaml, pillow and scikit-learn; not Ray
# (bench/packing.py then runs its trials as plain processes). Real data: Fashion-MNIST when its four
# .gz files are in .data/fashion-mnist (copy them from /usr/share/datasets/fashion-mnist), else digits.
# On this workplace's lent GPU machine (the device tool; its image has no Ray, and Ray's 79 MB wheel is
# larger than what travels there): run `bash bench/gpu_checks.sh $OUT` with carry [".data"] and
# timeout_s 580; the logs come back from $OUT. `bench/trainer.py` as in step 3 without --compile (what
# compilation adds: 0.997x timm's loop in the README's run 3) is left out to keep the whole under 10 min.
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1

data=digits
if [ -f .data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  data=fashion_mnist:.data/fashion-mnist
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import sys, torch, timm, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__)"
  echo "real data: $data"
} 2>&1 | tee "$out/env.txt"

# 1. where a step's time goes: augmentation alone, steps with and without it, GPU busy, synchronising calls
timeout 100 $py bench/gpu_profile.py --data "$data" --model vit_tiny --image-size 32 --patch-size 4 --batch 256 \
  --aug-strength 1.0 2>&1 | tee "$out/profile.txt"

# 1b. the prefetching thread: steps with and without it, with and without augmentation, alternated
timeout 90 $py bench/prefetch.py --data "$data" --steps 40 --rounds 5 2>&1 | tee "$out/prefetch.txt"

# 2. real data with full augmentation vs synthetic, CIFAR-sized ViT-Ti (target >= 0.9x)
timeout 80 $py bench/trainer.py --real-vs-synthetic --aug-strength 1.0 --data "$data" --subset 20000 \
  --image-size 32 --patch-size 4 --model vit_tiny --batch 256 --precision bf16 --epochs 3 --rounds 2 \
  2>&1 | tee "$out/real_vs_synthetic.txt"

# 3. trainer vs timm's eager plain loop, ViT-S/16 at 224 px, bf16, batch 256 (target >= 1.3x)
timeout 110 $py bench/trainer.py --model vit_small --synthetic 8192 --image-size 224 --patch-size 16 \
  --batch 256 --precision bf16 --compile --epochs 3 --rounds 1 2>&1 | tee "$out/trainer_vit_small.txt"

# 4. packing: aggregate throughput of k trials on one GPU vs one (target >= 2.2x for ViT-Ti), then the
# quickstart-sized trials
timeout 120 $py bench/packing.py --only cifar 2>&1 | tee "$out/packing.txt"
timeout 80 $py bench/packing.py --only quickstart 2>&1 | tee "$out/packing_quickstart.txt"

echo "=== summary"
grep -hE "^(device|GPU:|augmentation|training step|aug_strength|synchronising|  +[0-9]+  |.*ratio|\\|.*would choose|quickstart|CIFAR|  [a-z].* ms per step|the thread|thread paced|ms each part)" \
  "$out"/profile.txt "$out"/prefetch.txt "$out"/real_vs_synthetic.txt "$out"/trainer_vit_small.txt "$out"/packing.txt "$out"/packing_quickstart.txt \
  2>/dev/null | grep -v "^{"
