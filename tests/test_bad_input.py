"""The bad-input corpus: every malformed input is one line naming what is wrong, exit code 2, no
traceback, and nothing written (earlier results untouched). Runs the CLI entry point in-process."""

from pathlib import Path

import pytest

from vitsearch.cli import main

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"

# corpus file -> a phrase the one-line message must hold
FILE_CASES = {
    "space_yaml_unclosed_brace.yaml": "is not valid YAML at line",
    "space_yaml_bad_indent.yaml": "is not valid YAML at line",
    "space_yaml_tab.yaml": "is not valid YAML at line",
    "space_not_a_mapping.yaml": "must be a mapping",
    "space_wrong_type_num_samples.yaml": "num_samples is 'sixteen', but must be an integer >= 1",
    "space_wrong_type_max_epochs.yaml": "scheduler.max_epochs is 10.5, but must be an integer >= 1",
    "space_search_is_a_list.yaml": "search: must be a mapping",
    "space_unknown_top_key.yaml": "unknown key 'nmu_samples'; valid keys",
    "space_inverted_range.yaml": "must have low < high (empty or inverted range)",
    "space_empty_range.yaml": "must have low < high (empty or inverted range)",
    "space_empty_choice.yaml": "must be a non-empty list",
    "space_unknown_metric.yaml": "unknown metric 'top5'",
    "space_unknown_model.yaml": "invalid value for 'model': 'vit_gigantic'",
    "space_unknown_dataset.yaml": "invalid value for 'data': 'mnist'",
    "space_missing_data_path.yaml": "image folder '/nonexistent/folder' does not exist",
    "space_fixed_and_searched.yaml": "'lr' is both fixed and searched",
    "space_unknown_distribution.yaml": "unknown distribution 'normal'",
    "space_three_bounds.yaml": "must be [low, high]",
    "space_not_a_config_key.yaml": "search.learning_rate is not a TrainConfig key",
    "space_no_resources.yaml": "a trial needs cpu > 0 or gpu > 0",
    "space_batch_larger_than_the_data.yaml": "fixed.batch_size is 128, more than the 100 training images of 'digits'",
    "space_name_too_long.yaml": "name vit_small_lr_sweep_v... is 229 bytes long, but must be at most 200",
    "space_duplicate_key.yaml": "is not valid YAML at line 11, column 3: the key 'lr' appears twice in one mapping",
    "config_yaml_syntax.yaml": "is not valid YAML at line",
    "config_duplicate_key.yaml": "is not valid YAML at line 5, column 1: the key 'lr' appears twice in one mapping",
    "config_wrong_type.yaml": "invalid value for 'batch_size': '64 images' (must be an int)",
    "config_unknown_key.yaml": "unknown config key 'learning_rate'; valid keys",
    "config_negative_lr.yaml": "invalid value for 'lr': -0.001",
    "config_zero_batch.yaml": "invalid value for 'batch_size': 0",
    "config_unknown_model.yaml": "invalid value for 'model': 'convnext_gigantic'",
    "config_missing_cifar.yaml": "cs.toronto.edu",
    "config_bad_precision.yaml": "invalid value for 'precision': 'fp8'",
    "config_scalar.yaml": "must hold a mapping",
    "config_image_size_without_a_patch.yaml": "140,625 tokens, more than 1,024; use image_size 368 or 384",
    "config_patch_not_dividing.yaml": "invalid value for 'patch_size': 4 (must be an integer >= 1 that divides "
                                      "image_size (30))",
}


def run_cli(argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (one line, see _Parser.error)
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_the_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(FILE_CASES)
    assert len(FILE_CASES) + len(GENERATED) >= 30


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_corpus_file(name, tmp_path, capsys):
    command = ["search", "--space"] if name.startswith("space_") else ["train", "--config"]
    err = run_cli([*command, str(CORPUS / name), "--out", str(tmp_path / "out")], capsys)
    assert FILE_CASES[name] in err
    assert not (tmp_path / "out").exists()


def _image_folder(root: Path, extra: tuple[str, bytes]) -> Path:
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / label / f"{i}.png")
    (root / "a" / extra[0]).write_bytes(extra[1])
    return root


def _truncated_checkpoint(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: vit_micro\n")
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
    return run


def _results(tmp: Path, names: tuple[str, ...]) -> Path:
    """A results folder holding experiment folders (space.yaml and run.json), the last of `names` the latest."""
    import os

    for i, name in enumerate(names):
        (tmp / "results" / name).mkdir(parents=True)
        (tmp / "results" / name / "space.yaml").write_text("name: q\n")
        (tmp / "results" / name / "run.json").write_text("{}")
        os.utime(tmp / "results" / name / "run.json", (1e9 + i, 1e9 + i))
    return tmp / "results"


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


TRUNCATED_PNG = b"\x89PNG\r\n\x1a\n"


def _patch_space(tmp: Path) -> Path:
    """Patch sizes searched on digits (8 px) with image_size left to the data."""
    path = tmp / "ps.yaml"
    path.write_text("num_samples: 4\nscheduler: {max_epochs: 2, grace_period: 1, reduction_factor: 2}\n"
                    "resources: {cpu: 1}\nfixed: {model: vit_micro, data_subset: 300, batch_size: 64}\nsearch:\n"
                    "  patch_size: {choice: [2, 3]}\n")
    return path


def _linformer_space(tmp: Path) -> Path:
    """A micro ViT at 16 px, patch 4 (16 patches and the class token) with linformer_k searched up to 40."""
    path = tmp / "lk.yaml"
    path.write_text("num_samples: 4\nscheduler: {max_epochs: 2, grace_period: 1, reduction_factor: 2}\n"
                    "resources: {cpu: 1}\nfixed: {model: vit_micro, image_size: 16, patch_size: 4, "
                    "attention: linformer, data_subset: 300, batch_size: 64}\nsearch:\n"
                    "  linformer_k: {int: [2, 40]}\n")
    return path


def _init_space(tmp: Path, searched: str = "stem: {choice: [patch, conv]}") -> Path:
    """Weights of a micro ViT (patch stem, 4 blocks: its family's depth) on digits as init_from, with `searched`:
    TrainConfig's shape, which the probe loads them into, fits."""
    import torch

    from vitsearch.config import TrainConfig
    from vitsearch.model import build_model

    torch.save({"model": build_model(TrainConfig(model="vit_micro"), 1, 8, 10).state_dict()}, tmp / "w.pt")
    path = tmp / "init.yaml"
    path.write_text("num_samples: 4\nscheduler: {max_epochs: 2, grace_period: 1, reduction_factor: 2}\n"
                    f"resources: {{cpu: 1}}\nfixed: {{model: vit_micro, data_subset: 300, batch_size: 64, init_from: "
                    f"{tmp / 'w.pt'}}}\nsearch:\n  {searched}\n")
    return path


def _empty_class(tmp: Path) -> Path:
    root = _image_folder(tmp / "img", (".hidden", b""))  # skipped, as hidden files are
    (root / "c").mkdir()
    return root


def _split_folder(tmp: Path) -> Path:
    """An image folder already split: img/train/{a,b} and img/val/{a,b}."""
    for split in ("train", "val"):
        _image_folder(tmp / "img" / split, (".hidden", b""))
    return tmp / "img"


def _folder_with(tmp: Path, name: str, content: bytes) -> list[str]:
    return ["train", "--set", f"data=imagefolder:{_image_folder(tmp / 'img', (name, content))}"]


def _cifar_with(tmp: Path, twist: str) -> list[str]:
    """A CIFAR-10 folder of 5 batches of 8 random images, one of them broken in the way named."""
    import pickle

    import numpy as np
    folder = tmp / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names[:5] if twist == "names" else names}))
    for b in range(1, 6):
        data, labels = rng.integers(0, 256, (8, 3072), dtype=np.uint8), [0, 1, 2, 3, 4, 0, 1, 2]
        batch = {b"data": data, b"labels": labels}
        if b == 3:
            batch = {"label": {b"data": data, b"labels": [*labels[:-1], 10]},
                     "short": {b"data": data, b"labels": labels[:6]},
                     "float": {b"data": data / 255.0, b"labels": labels}, "list": [data, labels],
                     "names": {b"data": data, b"labels": [*labels[:-1], 7]}}[twist]
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(batch))
    return ["train", "--set", "model=vit_micro", f"data=cifar10:{folder}"]


def _idx_label(tmp: Path) -> list[str]:
    from conftest import digit_images, write_idx
    images, labels = digit_images(40, 28)
    labels[5] = 12
    write_idx(tmp / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp / "train-labels-idx1-ubyte.gz", labels)
    return ["train", "--set", "model=vit_micro", f"data=fashion_mnist:{tmp}"]


GENERATED = {
    # malformed CIFAR batches trained on misaligned labels, or failed with a traceback in the first step
    "a CIFAR label outside its classes": (lambda t: _cifar_with(t, "label"),
                                          "has 1 label outside 0..9 (the 10 class names), e.g. 10"),
    "CIFAR labels fewer than images": (lambda t: _cifar_with(t, "short"), "data_batch_3 has 8 images but labels "
                                                                          "of shape (6,)"),
    "CIFAR data not uint8": (lambda t: _cifar_with(t, "float"), "data_batch_3's data is float64 (8, 3072), not "
                                                                "uint8 (N, 3072)"),
    "a CIFAR batch that is no dict": (lambda t: _cifar_with(t, "list"), "data_batch_3 is not a dict with keys"),
    "CIFAR with fewer class names than labels": (lambda t: _cifar_with(t, "names"), "has 1 label outside 0..4 (the 5 "
                                                                                    "class names), e.g. 7"),
    "a Fashion-MNIST label outside its classes": (_idx_label, "has 1 label outside 0..9 (the 10 class names), e.g. 12"),
    "truncated png": (lambda t: _folder_with(t, "x.png", TRUNCATED_PNG), "cannot read image"),
    "non-image file": (lambda t: _folder_with(t, "notes.txt", b"hi"), "is not an image"),
    "jpeg of zeros": (lambda t: _folder_with(t, "z.jpg", bytes(64)), "cannot read image"),
    "a search space given to train --config": (lambda t: ["train", "--config", str(SPACES / "quickstart.yaml")],
                                               "is a search space (it has fixed, scheduler, search): run it with "
                                               "`search --space "),
    "a train config given to search --space": (lambda t: ["search", "--space",
                                                          str(ROOT / "configs" / "digits_micro.yaml")],
                                               "unknown key 'model': this is a TrainConfig file (for `train "
                                               "--config`), not a search space"),
    "an empty class folder": (lambda t: ["search", "--space", "quickstart", "--data",  # it was an 11th class
                                         f"imagefolder:{_empty_class(t)}"],
                              "/img/c' holds no images (1 of 3 class folders are empty); remove it or add its images"),
    # train/ and val/ were read as 2 classes (or: "needs >= 2 class sub-folders ...; found 2 class folder(s)")
    "a folder split into train and val": (lambda t: ["search", "--space", "quickstart", "--data",
                                                     f"imagefolder:{_split_folder(t)}"],
                                          "/img' holds split folders (train, val) with class folders in them, not "
                                          "one folder per class; use imagefolder:"),
    "truncated checkpoint": (lambda t: ["train", "--resume", str(_truncated_checkpoint(t))], "cannot be read ("),
    "resume a folder that is no experiment": (lambda t: ["search", "--resume", str(t)],
                                              "is not a vitsearch experiment"),
    "resume a train run as a search": (lambda t: ["search", "--resume", str(_truncated_checkpoint(t))],
                                       "is not a vitsearch experiment"),
    # a train run given where a search's folder goes said only "not a finished vitsearch experiment"
    "report of a train run": (lambda t: ["report", str(_truncated_checkpoint(t))],
                              "/run' is a `train` run (config.yaml, checkpoint.pt), not a search's experiment folder; "
                              "its epochs are in its epochs.parquet"),
    "reproduce --from a train run": (lambda t: ["reproduce", "--from", str(_truncated_checkpoint(t))],
                                     "/run' is a `train` run (config.yaml, checkpoint.pt), not a search's"),
    "unknown space name": (lambda t: ["search", "--space", "no_such_space"], "not found"),
    "--set without =": (lambda t: ["train", "--set", "lr"], "must have the form key=value"),
    "reproduce --resume of a folder without one": (lambda t: ["reproduce", "--resume", str(t)],
                                                   "no interrupted reproduce in it (no reproduce.partial.json)"),
    "reproduce --resume with --seeds": (lambda t: ["reproduce", "--resume", str(t), "--seeds", "5"],
                                        "--seeds goes with a new reproduce; --resume continues"),
    # --out was ignored where the work goes on in a folder of its own: the results were not where asked for
    "search --extend with --out": (lambda t: ["search", "--extend", str(t), "--trials", "2", "--out", str(t / "o")],
                                   "--out goes with --space (a new search); --extend continues in EXPERIMENT_DIR"),
    "train --resume with --out": (lambda t: ["train", "--resume", str(t), "--out", str(t / "o")],
                                  "--out goes with a new run; --resume continues in RUN_DIR"),
    "reproduce --from with --out": (lambda t: ["reproduce", "--from", str(t), "--out", str(t / "o")],
                                    "--out goes with a reproduce of the defaults alone; --from writes into "
                                    "EXPERIMENT_DIR"),
    "--space and --resume": (lambda t: ["search", "--space", "quickstart", "--resume", str(t)], "exactly one of"),
    "bad --address": (lambda t: ["search", "--space", "quickstart", "--address", "not-an-address"],
                      "must be HOST:PORT"),
    "--storage that is a file": (lambda t: ["search", "--space", "quickstart", "--storage", str(_file(t / "f"))],
                                 "is a file, not a folder"),
    "--storage of an unknown scheme": (lambda t: ["search", "--space", "quickstart", "--storage", "nosuch://b/x"],
                                       "cannot be used: Unrecognized filesystem type"),
    "--storage where no folder can be made": (lambda t: ["search", "--space", "quickstart", "--storage", "/proc/x/y"],
                                              "cannot make a folder in '/proc'"),
    "a searched linformer_k beyond the tokens": (
        lambda t: ["search", "--space", str(_linformer_space(t))],
        "search.linformer_k: int [2, 40] reaches 40, but this data and model make 17 tokens (the patches and the "
        "class token), and linformer_k must be below them: every trial that drew 17 or more would fail; search at "
        "most 16"),
    "a searched patch size that does not divide the data's": (
        lambda t: ["search", "--space", str(_patch_space(t))],
        "search.patch_size: choice [2, 3] draws 3, which does not divide this data's image size, 8 px (image_size "
        "is not fixed): every trial that drew one would fail; fix image_size, or search patch sizes that divide 8"),
    # 3 of 4 trials drew the conv stem, which the weights (of a patch stem) do not fit, and failed as they started
    "a searched stem that init_from's weights do not fit": (
        lambda t: ["search", "--space", str(_init_space(t))],
        "search.stem: choice ['patch', 'conv'] draws stem conv, which the weights of init_from '"),
    "a bare folder as --data": (lambda t: ["search", "--space", "quickstart", "--data",
                                           str(_image_folder(t / "img", ("c.png", TRUNCATED_PNG)))],
                                "; for a folder of class folders: imagefolder:"),
    "bad --device": (lambda t: ["train", "--set", "model=vit_micro", "--set", "image_size=16", "--device", "tpu"],
                     "invalid device 'tpu'"),
    "--device mps": (lambda t: ["train", "--set", "model=vit_micro", "--set", "image_size=16", "--device", "mps"],
                     "invalid device 'mps' (must be auto, cpu, cuda or cuda:N: vitsearch trains on CPUs and "
                     "CUDA GPUs)"),
    "KEY=VALUE after another option of train": (
        lambda t: ["train", "--set", "model=vit_micro", "--out", str(t / "out"), "lr=1e-3", "epochs=2"],
        "unrecognized arguments: lr=1e-3 epochs=2; KEY=VALUE pairs go right after --set, before any other option "
        "(--set lr=1e-3 epochs=2)"),
    "KEY=VALUE given to search": (lambda t: ["search", "--space", "quickstart", "lr=1e-3"],
                                  "search takes no KEY=VALUE pairs: TrainConfig values go in the space file's "
                                  "fixed: section"),
    "a search --name that leaves --out": (lambda t: ["search", "--space", "quickstart", "--name", "../x"],
                                          "--name '../x' must be a folder name inside --out"),
    "--data with --extend": (lambda t: ["search", "--extend", str(t), "--trials", "2", "--data", "fashion_mnist"],
                             "--data goes with --space (a new search); --extend continues on the experiment's"),
    "--name with --resume": (lambda t: ["search", "--resume", str(t), "--name", "again"],
                             "--name goes with --space (a new search); --resume continues in EXPERIMENT_DIR"),
    "a train --resume with --name": (lambda t: ["train", "--resume", str(_truncated_checkpoint(t)), "--name", "x"],
                                     "--name goes with a new run; --resume continues in RUN_DIR"),
    "a train --name longer than a folder name can be": (lambda t: ["train", "--set", "model=vit_micro", "--name",
                                                                   "r" * 300],
                                                        "--name rrrrrrrrrrrrrrrrrrrr... is 300 bytes long, but must "
                                                        "be at most 200"),
    "a train --name with a slash": (lambda t: ["train", "--set", "model=vit_micro", "--name", "a/b"],
                                    "--name 'a/b' must be a folder name inside --out"),
    # a file where a folder goes said the path "does not exist"; tarfile's error was 4 lines; `data=imagefolder:`
    # was read as a YAML mapping ("invalid value for 'data': {'imagefolder': None} (must be a str)")
    "an archive given as an image folder": (lambda t: ["train", "--data", f"imagefolder:{_file(t / 'pics.tar.gz')}"],
                                            "/pics.tar.gz' is a file, not a folder; extract the archive and point "
                                            "imagefolder: at the folder of class folders it holds"),
    "an IDX file given as the Fashion-MNIST folder": (
        lambda t: ["train", "--set", f"data=fashion_mnist:{_file(t / 'train-images-idx3-ubyte.gz')}"],
        "is a file; fashion_mnist:PATH takes the folder that holds train-images-idx3-ubyte[.gz] and "
        "train-labels-idx1-ubyte[.gz]: fashion_mnist:/"),
    "a file that is no CIFAR archive": (lambda t: ["train", "--data", f"cifar10:{_file(t / 'c.tar.gz')}"],
                                        "/c.tar.gz': not a tar archive (plain, gzip, bzip2 or xz)"),
    "imagefolder: without a path": (lambda t: ["train", "--set", "data=imagefolder:"],
                                    "invalid value for 'data': 'imagefolder:' (must be digits, fashion_mnist[:PATH], "
                                    "imagefolder:PATH"),
    # the results folder given for one of its experiments: the experiment to give is named
    "report of the results folder": (lambda t: ["report", str(_results(t, ("q-1",)))],
                                     "/results' is not a finished vitsearch experiment (no space.yaml in it); it "
                                     "holds one experiment folder, '"),
    "search --resume of the results folder": (lambda t: ["search", "--resume", str(_results(t, ("q-1", "q-2")))],
                                              "(no space.yaml and run.json in it); it holds 2 experiment folders: "
                                              "give one of them, such as the latest, '"),
    "train --resume of the results folder": (lambda t: ["train", "--resume", str(_truncated_checkpoint(t).parent)],
                                             "is not a train run folder (no checkpoint.pt in it); it holds one train "
                                             "run folder, '"),
    "train --data with --set data=": (lambda t: ["train", "--data", "digits", "--set", "data=fashion_mnist"],
                                      "--data and --set data=... both give the data; give it once"),
}


def test_address_auto_without_a_cluster_is_one_line_before_the_data_loads(tmp_path, capsys, monkeypatch):
    """`--address auto` with no cluster to find failed only in ray.init, after the data had loaded (minutes for a
    large image folder). It is now found out first, as ray.init looks (RAY_ADDRESS, then this machine's Ray)."""
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray instance runs on this machine: --address auto would join it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    missing = tmp_path / "no-such-folder"  # the data: had it been loaded first, the error would name it
    err = run_cli(["search", "--space", "quickstart", "--data", f"imagefolder:{missing}", "--address", "auto",
                   "--out", str(tmp_path / "out")], capsys)
    assert err == ("error: --address auto found no Ray cluster: RAY_ADDRESS is not set and no `ray start --head` "
                   "runs on this machine; start the cluster, or give its head's address as HOST:PORT, or leave "
                   "--address out for a Ray instance of this search's own")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_case(name, tmp_path, capsys):
    build, message = GENERATED[name]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = build(tmp_path)
    # (--out goes with new work alone; `report` takes none)
    continued = {"--resume", "--extend", "--from", "--out"} & set(args) or args[0] == "report"
    err = run_cli([*args, *([] if continued else ["--out", str(tmp_path / "out")])], capsys)
    assert message in err
    assert not (tmp_path / "out").exists()
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert len(after) >= len(before)  # inputs untouched (the builders created them before the run)


@pytest.mark.parametrize("command", [["search", "--space", "quickstart"],
                                     ["train", "--set", "model=vit_micro", "--set", "image_size=16"]])
def test_an_out_folder_that_cannot_be_made_is_one_line_before_anything_runs(command, tmp_path, capsys):
    """--out under /proc, or naming a file: one line before the data loads or Ray starts (it was a
    traceback from the first write, after Ray had started and the probe had run)."""
    assert "cannot make a folder in '/proc'" in run_cli([*command, "--out", "/proc/x/y"], capsys)
    (tmp_path / "f").write_text("a file")
    assert "is a file, not a folder" in run_cli([*command, "--out", str(tmp_path / "f")], capsys)
    assert (tmp_path / "f").read_text() == "a file"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["search", "--space", "quickstart"], ["train", "--set", "model=vit_micro"],
                                     ["reproduce", "--seeds", "1"]], ids=["search", "train", "reproduce"])
def test_a_gpu_this_machine_lacks_is_one_line_before_anything_else(command, tmp_path, capsys):
    """`--device cuda` without a GPU: the one line came after the data had loaded and the plan's (or the
    run's) first line had been printed."""
    assert main([*command, "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: device 'cuda' was asked for, but no CUDA GPU is available (use " \
        "--device cpu)"
    assert not (tmp_path / "out").exists()


def test_ray_address_is_not_announced_before_a_refusal(tmp_path, monkeypatch, capsys):
    """With RAY_ADDRESS set, "joining the Ray cluster at RAY_ADDRESS=..." came before the line refusing the
    command (and before a finished search's summary, which joins nothing)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    code = main(["search", "--extend", str(tmp_path), "--trials", "0"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "is not a vitsearch experiment folder" in captured.err


def test_init_from_is_loaded_into_the_ends_of_a_searched_depth(tmp_path):
    """The deepest end of the search is named (the probe, which loads it, said only that init_from did not fit);
    a depth range the weights fit (shallower models keep the first blocks) is no error."""
    from vitsearch.data import load_data
    from vitsearch.errors import SpaceError
    from vitsearch.search_cli import _check_init_shapes
    from vitsearch.space import load_space

    for depths, refused in (("[2, 6]", True), ("[1, 4]", False)):
        (tmp_path / "w.pt").unlink(missing_ok=True)
        space = load_space(str(_init_space(tmp_path, f"depth: {{int: {depths}}}")))
        data = load_data(space.trial_config({}))
        if not refused:
            _check_init_shapes(space, data, "init.yaml")
            continue
        with pytest.raises(SpaceError) as caught:
            _check_init_shapes(space, data, "init.yaml")
        assert str(caught.value) == (
            f"init.yaml: search.depth: int [2, 6] draws depth 6, which the weights of init_from '{tmp_path / 'w.pt'}' "
            "do not fit (no weights for 'blocks.4.norm1.weight': a different architecture): every trial that drew it "
            "would fail; search only shapes the weights fit, or fix depth"), caught
    # weights that fit not even TrainConfig's shape (32 wide, not 64) are not the searched depth's doing: the probe
    # says so of a fixed init_from
    import torch

    from vitsearch.config import TrainConfig
    from vitsearch.model import build_model

    torch.save({"model": build_model(TrainConfig(model="vit_micro", embed_dim=32), 1, 8, 10).state_dict()},
               tmp_path / "w.pt")
    _check_init_shapes(space, data, "init.yaml")
