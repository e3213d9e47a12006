"""`python main.py train` end to end in a subprocess: outputs, resume, one-line errors with exit code 2."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MICRO = ["--set", "model=vit_micro", "--set", "image_size=16", "--set", "patch_size=4", "--set", "batch_size=64",
         "--set", "warmup_epochs=0", "--set", "data_subset=300"]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_train_writes_epochs_checkpoint_and_config_then_resumes(tmp_path):
    proc = run("train", *MICRO, "--set", "epochs=2", "lr=0.002", "--out", str(tmp_path), "--name", "r")  # 2 in one
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "r"
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert list(epochs["epoch"]) == [1, 2] and {"val_acc", "train_loss", "grad_norm"} <= set(epochs.columns)
    assert (run_dir / "checkpoint.pt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"] == "vit_micro" and saved["epochs"] == 2 and saved["lr"] == 0.002
    assert "best val_acc" in proc.stdout
    # Each epoch's line says how long the rest of the run takes, at the run's time per epoch so far.
    out = " ".join(proc.stdout.split())
    assert re.search(r"img/s ~\d+ s left$", out.split("epoch 1/2")[1].split("epoch 2/2")[0].strip())
    assert "left" not in out.split("epoch 2/2")[1]
    # In a log (no terminal) each epoch is one whole line, for grep and tail.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(line.rstrip().split()[-1] in ("left", "img/s") for line in lines), lines
    # The same run continued: the saved config is reused, 2 more epochs are impossible (epochs is part of
    # the config), so resuming a finished run trains nothing, says so and rewrites no file.
    mtimes = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    again = run("train", "--resume", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert list(pd.read_parquet(run_dir / "epochs.parquet")["epoch"]) == [1, 2]
    assert f"run {run_dir} has finished all 2 epochs: nothing to resume" in " ".join(again.stdout.split())
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == mtimes
    # A longer run is a new run (the cosine schedule spans `epochs`): the refusal says how to start it.
    longer = run("train", "--resume", str(run_dir), "--set", "epochs=4", "warmup_epochs=1")
    assert longer.returncode == 2 and longer.stderr.count("\n") == 1, longer.stderr
    assert f"--resume continues {str(run_dir)!r} with its own config: 'epochs' is 2 there and 4 here; to train it " \
        f"differently, start a new run: python main.py train --config {run_dir / 'config.yaml'} --set epochs=4 " \
        "warmup_epochs=1" in longer.stderr, longer.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == mtimes


def test_a_warmup_that_fills_the_run_trains_without_timm_noise(tmp_path):
    """warmup_epochs >= epochs (TrainConfig's 5 in a 2-epoch search) warms up to the last step: timm's
    warning that its one-step cosine "will have no effect" is not shown."""
    proc = run("train", *MICRO, "--set", "epochs=2", "--set", "warmup_epochs=5", "--out", str(tmp_path), "--name", "w")
    assert proc.returncode == 0, proc.stderr
    assert "Cosine annealing" not in proc.stdout + proc.stderr
    epochs = pd.read_parquet(tmp_path / "w" / "epochs.parquet")
    assert list(epochs["epoch"]) == [1, 2]
    # `lr` is the rate of each epoch's last step: rising to the peak (1e-3 x 64 / 512) at the run's last step. It was
    # the rate set after that step, for a next step never taken: the last epoch showed min_lr (1e-5).
    assert epochs["lr"].iloc[0] < epochs["lr"].iloc[1] == pytest.approx(1e-3 * 64 / 512)
    # with layer_decay it is the schedule's rate (the head's): it was the first param group's, the embedding's,
    # 0.5 ** (depth + 1) of it here
    decayed = run("train", *MICRO, "--set", "epochs=2", "warmup_epochs=5", "layer_decay=0.5", "--out", str(tmp_path),
                  "--name", "d")
    assert decayed.returncode == 0, decayed.stderr
    rates = pd.read_parquet(tmp_path / "d" / "epochs.parquet")["lr"]
    assert list(rates) == pytest.approx(list(epochs["lr"]))
    assert f"lr {rates.iloc[1]:.2e}" in decayed.stdout


def test_a_fine_tuning_run_names_its_weights_and_what_is_frozen(tmp_path):
    """The first line named a distillation's teacher, but not the init_from weights a run starts from, nor its
    frozen blocks or layer_decay: a fine-tuning read like training from scratch."""
    base = run("train", *MICRO, "--set", "epochs=1", "--out", str(tmp_path), "--name", "base")
    assert base.returncode == 0, base.stderr
    assert "weights from" not in base.stdout
    lines = {}
    for extra in (["freeze_blocks=2", "layer_decay=0.75"], ["freeze_blocks=4"], []):
        proc = run("train", *MICRO, "--set", "epochs=1", f"init_from={tmp_path / 'base'}", *extra, "--out",
                   str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        lines[" ".join(extra)] = " ".join(proc.stdout.split("epoch ")[0].split())
    source = f", weights from {tmp_path / 'base'}"
    assert lines["freeze_blocks=2 layer_decay=0.75"].endswith(
        f"{source} (the embeddings and the first 2 blocks frozen; layer_decay 0.75)"), lines
    assert lines["freeze_blocks=4"].endswith(f"{source} (the embeddings and every block frozen)"), lines  # depth 4
    assert lines[""].endswith(source), lines


def test_a_run_with_monitors_prints_them_each_epoch(tmp_path):
    """`monitors=true` wrote its figures to epochs.parquet alone: the epoch lines showed none of them. Now each
    epoch's line ends with them, on one line in a log however long it is (it wrapped at 160 columns)."""
    proc = run("train", *MICRO, "--set", "epochs=2", "monitors=true", "--out", str(tmp_path), "--name", "m")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    epochs = pd.read_parquet(tmp_path / "m" / "epochs.parquet")
    assert len(lines) == 2, proc.stdout
    for line, (_, row) in zip(lines, epochs.iterrows()):
        assert f"grad_norm {row['grad_norm']:.3f}  cls_norm {row['cls_norm']:.2f}  attn_entropy " \
            f"{row['attn_entropy_mean']:.3f} (min {row['attn_entropy_min']:.3f})  mlp_sparsity " \
            f"{row['mlp_sparsity']:.3f}  {row['images_per_s']:.0f} img/s" in line, line
    plain = run("train", *MICRO, "--set", "epochs=1", "--out", str(tmp_path), "--name", "p")
    assert plain.returncode == 0 and "cls_norm" not in plain.stdout, plain.stderr


def test_half_precision_on_a_cpu_and_a_subset_larger_than_the_data_are_said(tmp_path):
    """fp16 trained at 66 images/s against fp32's 723 on a CPU, without a word (bf16: 389). A data_subset of
    100,000 on digits used its 1,617 training images, and only the count in the first line showed it. Keys set
    where the run never reads them (soft distillation without a teacher) changed nothing, without a word."""
    proc = run("train", *MICRO, "--set", "epochs=1", "precision=bf16", "data_subset=100000", "distill_mode=soft",
               "lr_scaling=none", "lr_base_batch=256", "warmup_epochs=1", "depth=1", "drop_path=0.3", "--device", "cpu",
               "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "note: precision bf16 on a CPU is emulated, ~2x slower than fp32 (it pays on a GPU); precision auto " \
        "uses fp32 on a CPU" in out, proc.stdout
    assert "note: data_subset 100000 is more than the 1617 training images of 'digits': all of them are used" in out
    # keys this run never reads: they trained as without them, without a word
    assert "note: distill_mode 'soft' has no effect without a teacher; lr_base_batch 256 has no effect with " \
        "lr_scaling none (lr is the rate used whatever the batch); drop_path 0.3 has no effect with depth 1 " \
        "(stochastic depth rises from 0 at the first block: a lone block is never dropped)" in out
    # a warmup that fills the run: the lr only rose, without a word
    assert "note: warmup_epochs 1 is not shorter than the run (1 epoch): the lr rises until the last step and " \
        "never decays; set warmup_epochs below 1" in out
    # one epoch of 300 images learned nothing: its val_acc was at chance, and the table said no more
    plain = run("train", *MICRO, "--set", "epochs=1", "--device", "cpu", "--out", str(tmp_path))
    assert plain.returncode == 0 and plain.stdout.count("note:") == 1, plain.stdout
    assert re.search(r"note: the run learned nothing measurable: its best val_acc, (0\.\d{4}), is within chance "
                     r"\(always answering the most common class scores 0\.1278 on the 180 validation images, and two "
                     r"standard errors are 0\.0498\), so its weights are no better than a guess; give it more epochs, "
                     r"more data, or a shorter warmup or a higher lr", " ".join(plain.stdout.split())), plain.stdout


def test_a_class_the_split_leaves_without_training_images_is_said(tmp_path):
    """The split is random: a class of one image in a folder of 1 + 8 can land only in validation (seed 10 puts it
    there), where no run can learn it. Training went on without a word; seed 0 keeps it in training."""
    from conftest import digit_images
    from PIL import Image

    images, labels = digit_images(120, 16)
    ones = [img for img, label in zip(images, labels) if label == 1][:8]
    zero = next(img for img, label in zip(images, labels) if label == 0)
    assert len(ones) == 8
    for name, pictures in (("a", [zero]), ("b", ones)):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i, img in enumerate(pictures):
            Image.fromarray(img).save(tmp_path / "pics" / name / f"{i}.png")
    outputs = {}
    for seed in (10, 0):
        proc = run("train", "--data", f"imagefolder:{tmp_path / 'pics'}", "--set", "model=vit_micro", "epochs=1",
                   "warmup_epochs=0", "batch_size=2", f"seed={seed}", "--device", "cpu", "--out", str(tmp_path / "out"))
        assert proc.returncode == 0, proc.stderr
        outputs[seed] = proc.stdout
    # one line in a log (173 characters: at 160 columns its last words went on to a second line)
    assert "note: 1 of 2 classes ('a') has no training image after the split (seed, val_fraction, data_subset): no " \
           "run can learn them; add images of them, or lower val_fraction" in outputs[10].splitlines(), outputs[10]
    assert "note:" not in outputs[0], outputs[0]


@pytest.mark.parametrize("args, message", [
    (["--set", "lr=-1"], "invalid value for 'lr': -1.0"),
    (["--set", "modle=vit_micro"], "unknown config key 'modle'; valid keys"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["--set", "data=imagefolder:/nonexistent"], "does not exist"),
    (["--resume", "/tmp"], "is not a train run folder"),
    (["--set", "batch_size=100000"], "must be <= the"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    proc = run("train", *args, *([] if "--resume" in args else ["--out", str(tmp_path / "out")]))  # (new runs')
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def _file_size_limit(limit_bytes: int):
    """Writes past `limit_bytes` fail with EFBIG, as they would on a full disk (SIGXFSZ ignored)."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_is_one_line_and_keeps_earlier_files(tmp_path):
    proc = run("train", *MICRO, "--set", "epochs=1", "--out", str(tmp_path), "--name", "r")
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    size = (tmp_path / "r" / "checkpoint.pt").stat().st_size
    # the same run continued with more epochs cannot write its (same-sized) checkpoint
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(before["config.yaml"]),
                                                                  "epochs": 2}))
    full = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--config",
                           str(tmp_path / "r" / "config.yaml"), "--out", str(tmp_path), "--name", "r2"],
                          capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(size // 2))
    assert full.returncode == 2, full.stderr
    assert "cannot write" in full.stderr and "checkpoint.pt" in full.stderr and "earlier files are kept" in full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and "Traceback" not in full.stderr
    assert not any((tmp_path / "r2").glob("*.tmp")) and not (tmp_path / "r2" / "checkpoint.pt").exists()
    for name, content in before.items():  # the earlier run's files are untouched
        if name != "config.yaml":
            assert (tmp_path / "r" / name).read_bytes() == content


def test_a_stop_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path):
    """Ctrl-C or SIGTERM (now a KeyboardInterrupt in `train` too) while a file is half-written: the
    earlier file is kept and the temporary one removed (it was left as .NAME.PID.tmp)."""
    from vitsearch.files import _atomic

    (tmp_path / "epochs.parquet").write_bytes(b"earlier")

    def stopped(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic(tmp_path / "epochs.parquet", stopped)
    assert [p.name for p in tmp_path.iterdir()] == ["epochs.parquet"]
    assert (tmp_path / "epochs.parquet").read_bytes() == b"earlier"


def test_loader_processes_started_by_spawn_or_forkserver_do_not_run_the_command_again(image_folder, tmp_path):
    """A process started by spawn or forkserver (Python 3.14's default on Linux) imports the main script
    again: main.py runs its command only as the program itself, not in a streaming loader's workers."""
    code = ("import multiprocessing, runpy, sys; multiprocessing.set_start_method('forkserver'); "
            "sys.argv = ['main.py', *sys.argv[1:]]; runpy.run_path('main.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, "train", *MICRO, "--set", f"data=imagefolder:{image_folder}",
                           "--set", "loader=stream", "--set", "loader_workers=1", "--set", "epochs=1",
                           "--set", "batch_size=16", "--set", "data_subset=null", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("final val_acc") == 1, proc.stdout


def test_reproduce_checks_out_before_training_and_never_overwrites_another(tmp_path, monkeypatch, capsys):
    """`reproduce` writes reproduce.parquet after every run (hours with the defaults' 100 epochs): an --out
    it cannot write is one line before any training (it failed after all of it), and two runs started in
    the same second each keep their reproduce.parquet (the second replaced the first's). The training
    itself is replaced here by canned rows: what is tested is where they go."""
    from vitsearch import cli, reproduce

    trained = []

    def canned(configs, seeds, *args, **kwargs):
        trained.append(seeds)
        return pd.DataFrame([{"config": "recommended defaults", "seed": s, "final_val_acc": 0.5 + s / 10,
                              "final_val_loss": 1.0, "final_train_loss": 1.0, "epochs": 100, "wall_s": 1.0}
                             for s in range(seeds)])

    monkeypatch.setattr(reproduce, "run", canned)
    assert cli.main(["reproduce", "--seeds", "1", "--out", "/proc/x/y"]) == 2
    assert "--out '/proc/x/y': cannot make a folder in '/proc'" in capsys.readouterr().err and not trained
    monkeypatch.setattr(cli.time, "strftime", lambda fmt, *a: "reproduce-20261127-090000")
    for seeds in (1, 2):
        assert cli.main(["reproduce", "--seeds", str(seeds), "--out", str(tmp_path)]) == 0
    first, second = tmp_path / "reproduce-20261127-090000", tmp_path / "reproduce-20261127-090000-2"
    assert [len(pd.read_parquet(f / "reproduce.parquet")) for f in (first, second)] == [1, 2]
    assert f"wrote {second}/reproduce.parquet" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_an_exclusive_write_claims_a_file_once(tmp_path, monkeypatch, hard_links):
    """How a run or search claims its folder (its config.yaml or space.yaml), also on a filesystem without
    hard links (some network and FUSE mounts refuse os.link): the first writer wins, the second gets
    FileExistsError and the first one's content stays; no temporary file is left."""
    import os

    from vitsearch.files import write_yaml

    if not hard_links:
        def no_link(*args):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    write_yaml({"who": "first"}, tmp_path / "claim.yaml", exclusive=True)
    with pytest.raises(FileExistsError):
        write_yaml({"who": "second"}, tmp_path / "claim.yaml", exclusive=True)
    assert yaml.safe_load((tmp_path / "claim.yaml").read_text()) == {"who": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["claim.yaml"]


def test_resume_on_data_that_changed_since_is_one_line(image_folder, tmp_path):
    """An image added to the folder since the run's checkpoint: its train/validation split is another, and
    the resumed run went on with it without a word. The checkpoint holds the split's fingerprint."""
    import shutil

    from vitsearch.config import TrainConfig
    from vitsearch.data import load_data
    from vitsearch.files import write_yaml
    from vitsearch.train import train

    pics = tmp_path / "pics"
    shutil.copytree(image_folder, pics)
    cfg = TrainConfig(model="vit_micro", data=f"imagefolder:{pics}", image_size=16, patch_size=4, batch_size=32,
                      epochs=3, warmup_epochs=0)
    run_dir = tmp_path / "r"
    train(cfg, data=load_data(cfg), checkpoint_dir=run_dir, checkpoint_due=lambda epoch: epoch == 1)  # then lost
    write_yaml(cfg.to_dict(), run_dir / "config.yaml")
    first = sorted((pics / "class_0").iterdir())[0]
    shutil.copy(first, first.with_name("added" + first.suffix))
    proc = run("train", "--resume", str(run_dir))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.fullmatch(rf"error: checkpoint '{run_dir / 'checkpoint.pt'}' was trained on other data: "
                        rf"'imagefolder:{pics}' held 108 train / 12 val images, hash [0-9a-f]{{16}} then and holds "
                        r"109 train / 12 val images, hash [0-9a-f]{16} now \(changed since\), so its train/validation "
                        r"split would differ; restore the data, or start a new run", proc.stderr.strip()), proc.stderr
    assert not (run_dir / "epochs.parquet").exists()
    first.with_name("added" + first.suffix).unlink()
    proc = run("train", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert pd.read_parquet(run_dir / "epochs.parquet")["epoch"].tolist() == [1, 2, 3]


def test_times_are_said_in_units_people_read():
    """A CPU-only ViT-S search's estimate said "1468.5 h"; past three days it is said in days."""
    from vitsearch.cli import duration

    assert [duration(s) for s in (45, 720, 12_600, 71 * 3600, 1468.5 * 3600)] == \
        ["45 s", "12 min", "3.5 h", "71.0 h", "61 days"]
