"""GPU trial packing (`resources: {gpu: auto}`) and the compiled trainer, as far as a CPU can test them:
the packing decision from measured rows, the measurement window itself, and the CPU fallback."""

import pytest
import torch
from conftest import micro_config

from vitsearch.data import load_data
from vitsearch.packing import Packing, choose
from vitsearch.space import parse_space
from vitsearch.train import measure_window, train

# The H100 figures for CIFAR-sized ViT-Ti trials: 1, 2, 4 processes on one GPU.
H100 = [{"k": 1, "aggregate_img_s": 8900.0, "peak_memory_gb": 2.0},
        {"k": 2, "aggregate_img_s": 18400.0, "peak_memory_gb": 2.0},
        {"k": 4, "aggregate_img_s": 20700.0, "peak_memory_gb": 2.0}]


def test_packing_doubles_while_throughput_rises_enough():
    packing = choose(H100, memory_total_gb=80)
    assert packing.trials_per_gpu == 4  # 20,700 / 18,400 = +12.5 % >= 10 %
    flat = [*H100[:2], {**H100[2], "aggregate_img_s": 19000.0}]
    packing = choose(flat, memory_total_gb=80)
    assert packing.trials_per_gpu == 2 and "added less than 10%" in packing.reason
    assert "2: 18,400 img/s" in packing.describe()


def test_packing_never_exceeds_memory():
    big = [{**row, "peak_memory_gb": 30.0} for row in H100]
    packing = choose(big, memory_total_gb=80)  # 4 x 30 GB > 85 % of 80 GB
    assert packing.trials_per_gpu == 2 and "would not fit in memory" in packing.reason
    assert choose(H100[:1], 80).trials_per_gpu == 1
    assert Packing(**choose(H100, 80).to_dict()).trials_per_gpu == 4  # round-trips through run.json


def test_measure_window_trains_for_the_window():
    cfg = micro_config(batch_size=32)
    rate, peak = measure_window(cfg, load_data(cfg), "cpu", window_s=0.5)
    assert rate > 0 and peak == 0.0


def test_packing_is_measured_with_plain_processes_where_ray_is_missing():
    """bench/packing.py on a machine without Ray: k spawned processes train together after a barrier
    (here on the CPU, which has no peak GPU memory), and a failing process is one error, not a hang."""
    from vitsearch.packing import measure_in_processes

    cfg = micro_config(batch_size=32)
    data = load_data(cfg)
    row = measure_in_processes(cfg, data, "cpu", 2, window_s=0.5)
    assert row["k"] == 2 and row["aggregate_img_s"] > 0 and row["peak_memory_gb"] == 0.0
    with pytest.raises(RuntimeError, match="a packing probe process failed: ConfigError"):
        measure_in_processes(cfg, data, "cuda:7" if not torch.cuda.is_available() else "nodevice", 2, window_s=0.5)


def test_gpu_auto_is_the_default_and_falls_back_to_cpu_trials():
    space = parse_space({"metric": "val_acc", "mode": "max", "num_samples": 2,
                         "scheduler": {"max_epochs": 2, "grace_period": 1}, "resources": {"cpu": 1},
                         "fixed": {"model": "vit_micro"}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}}},
                        origin="s.yaml")
    assert space.gpu_auto and space.gpu == (1.0 if torch.cuda.is_available() else 0.0)
    fixed = parse_space({**space.source, "resources": {"cpu": 1, "gpu": 0.5}}, origin="s.yaml")
    assert not fixed.gpu_auto and fixed.gpu == 0.5


@pytest.mark.skipif(not torch.cuda.is_available() and not __import__("shutil").which("cc"),
                    reason="torch.compile on a CPU needs a C compiler")
def test_compiled_training_matches_the_plain_step_and_saves_plain_names(tmp_path):
    cfg = micro_config(epochs=1, data_subset=256, batch_size=64, aug_strength=0.0)
    plain = train(cfg)["history"][0]
    compiled = train(cfg.replace(compile=True), checkpoint_dir=tmp_path)["history"][0]
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)
    assert compiled["val_acc"] == pytest.approx(plain["val_acc"], abs=0.02)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)
