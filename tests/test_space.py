"""Search-space files: strict loading, one-line errors naming key, value and rule."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitsearch.errors import SpaceError
from vitsearch.space import load_space, parse_space

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "name": "t", "metric": "val_acc", "mode": "max", "num_samples": 4, "seed": 0,
    "scheduler": {"max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
    "fixed": {"model": "vit_micro", "data": "digits"},
    "search": {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [32, 64]}},
}


def variant(**changes):
    space = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = space
        for part in path:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return space


BAD = [
    (variant(typo_key=1), "unknown key 'typo_key'; valid keys"),
    (variant(metric="accuracy"), "unknown metric 'accuracy'; the trainer reports val_acc"),
    (variant(mode="min"), "mode 'min' does not fit metric 'val_acc'"),
    (variant(num_samples=0), "num_samples is 0, but must be an integer >= 1"),
    (variant(scheduler__reduction_factor=1), "scheduler.reduction_factor is 1, but must be an integer >= 2"),
    (variant(scheduler__grace_period=9), "grace_period is 9, but must be <= scheduler.max_epochs"),
    (variant(scheduler__patience=3), "unknown key scheduler.patience"),
    (variant(fixed__lr=1e-3), "'lr' is both fixed and searched"),
    (variant(search__learning_rate={"uniform": [0.1, 0.2]}), "search.learning_rate is not a TrainConfig key"),
    (variant(search__lr={"loguniform": [1e-2, 1e-4]}), "must have low < high (empty or inverted range)"),
    (variant(search__lr={"uniform": [0.1, 0.1]}), "must have low < high (empty or inverted range)"),
    (variant(search__lr={"gaussian": [0, 1]}), "unknown distribution 'gaussian'"),
    (variant(search__lr={"loguniform": [0, 1]}), "must be > 0 for a log scale"),
    (variant(search__batch_size={"choice": []}), "must be a non-empty list"),
    (variant(search__batch_size={"choice": [32, 32]}), "repeats a value"),
    (variant(search__batch_size={"choice": [0, 32]}), "invalid value for 'batch_size': 0"),
    (variant(search__warmup_epochs={"int": [0, 2.5]}), "must be an integer"),
    (variant(fixed__model="convnext_gigantic"), "fixed: invalid value for 'model'"),
    (variant(fixed__epochs=5), "the budget is scheduler.max_epochs"),
    (variant(search__seed={"int": [0, 5]}), "data is loaded once per search"),
    (variant(search={}), "search: is empty"),
    (variant(resources={"cpu": -1}), "resources.cpu is -1, but must be a number >= 0"),
    # widths and head counts no trial could build with (each such trial failed as its model was built)
    (variant(fixed__num_heads=4, search__embed_dim={"choice": [30, 32]}),
     "search.embed_dim: 30 builds no model with num_heads 4 and model 'vit_micro' (num_heads must divide "
     "embed_dim): every trial with it would fail"),
    (variant(search__embed_dim={"choice": [30, 34]}, search__num_heads={"choice": [4, 8]}),
     "search.num_heads: 4 builds no model with embed_dim [30, 34] and model 'vit_micro'"),
    # a range of widths most of which a fixed head count does not divide: 5 of 6 trials failed as they started
    (variant(fixed__num_heads=4, search__embed_dim={"int": [32, 96]}),
     "search.embed_dim: int [32, 96] draws 48 of 65 values that build no model with num_heads 4 and model "
     "'vit_micro' (num_heads must divide embed_dim: 33, 34, 35, 37, 38, ...): every trial that drew one would fail; "
     "search a choice of those that build (choice: [32, 36, 40, 44, 48, 52, 56, 60, ...])"),
    (variant(search__num_heads={"int": [2, 8]}),
     "search.num_heads: int [2, 8] draws 4 of 7 values that build no model with the model family's embed_dim and "
     "model 'vit_micro' (num_heads must divide embed_dim: 3, 5, 6, 7): every trial that drew one would fail; "
     "search a choice of those that build (choice: [2, 4, 8])"),
    (variant(fixed__model="vit_small", fixed__num_heads=5),
     "fixed.num_heads: 5 builds no model with the model family's embed_dim and model 'vit_small'"),
    # a fixed head count that the defaults trial's width (the model's own) cannot take: it stopped the search
    (variant(fixed__num_heads=3, search__embed_dim={"choice": [48, 96]}),
     "the recommended defaults, every search's first trial, run TrainConfig's embed_dim unset (model vit_micro's "
     "own): num_heads 3 does not divide embed_dim 64 there, so that trial builds no model; fix embed_dim instead of "
     "searching, or a fixed num_heads that divides 64"),
    # a whole-number key on a continuous scale: every trial drew a fraction and failed
    (variant(search__batch_size={"loguniform": [16, 128]}),
     "search.batch_size.loguniform: batch_size takes whole numbers, so it would draw fractions; search it with int "
     "or int-log (or choice)"),
    # distillation keys where no trial distils: every trial trained alike whatever was drawn
    (variant(search__distill_mode={"choice": ["hard", "soft"]}),
     "search.distill_mode: has no effect without a teacher (fix or search `teacher`)"),
    (variant(fixed__distill_weight=0.3), "fixed.distill_weight: has no effect without a teacher"),
    (variant(fixed__teacher="results/t", search__distill_temperature={"uniform": [1.0, 5.0]}),
     "search.distill_temperature: has no effect without soft distillation (distill_mode: soft, fixed or "
     "searched, with a teacher): every trial would train the same whatever it is"),
    # a whole-number range whose inner values TrainConfig refuses (its ends pass): those trials failed as they started
    (variant(fixed__image_size=16, search__patch_size={"int": [2, 8]}),
     "search.patch_size: int [2, 8] draws 4 of 7 values TrainConfig refuses (invalid value for 'patch_size': 3 (must "
     "be an integer >= 1 that divides image_size (16)); also 5, 6, 7): every trial that drew one would fail; search a "
     "choice of the others (choice: [2, 4, 8])"),
    # min_lr and lr both searched, min_lr reaching above the lowest lr: a trial drawing min_lr > lr failed
    (variant(search__min_lr={"loguniform": [1e-6, 1e-3]}),
     "search.min_lr: loguniform [1e-06, 0.001] reaches 0.001, above the lowest lr searched (0.0001): a trial that "
     "draws a min_lr above its lr fails (min_lr must be <= lr); keep min_lr at most 0.0001"),
    # ConvStem searched where the fixed patch is no power of two: each trial that drew conv failed as it was built
    (variant(fixed__image_size=28, fixed__patch_size=7, search__stem={"choice": ["patch", "conv"]}),
     "search.stem: invalid value for 'stem': 'conv' (must be one of patch, conv; conv needs a ViT model and a patch "
     "size that is a power of two (patch_size is 7))"),
    # keys that change how a trial runs, not what it learns: the search ranked noise
    (variant(search__monitors={"choice": [False, True]}),
     "search.monitors: it records attention maps and norms, not what a trial learns: every trial would learn the "
     "same whatever is drawn; fix it instead"),
    (variant(search__micro_batch_size={"choice": [16, 32]}),
     "search.micro_batch_size: it splits each batch for memory (accumulation makes up the same batch_size), not "
     "what a trial learns: every trial would learn the same whatever is drawn; fix it instead"),
    # a warmup range past the budget: the trainer cuts a warmup to the run, so those values trained alike
    (variant(search__warmup_epochs={"uniform": [0.0, 30.0]}),
     "search.warmup_epochs: uniform [0.0, 30.0] reaches 30, past the budget of 4 epochs (scheduler.max_epochs): a "
     "warmup longer than the run is cut to it, so every value from 4 on trains the same; search at most 4"),
    # lr_base_batch where lr is used as given (the quickstart's lr_scaling: none): it scaled nothing
    (variant(fixed__lr_scaling="none", search__lr_base_batch={"choice": [256, 512]}),
     "search.lr_base_batch: has no effect without lr_scaling linear or sqrt (with none, lr is the rate used "
     "whatever the batch)"),
    # lr_scaling searched where every trial's batch is lr_base_batch (TrainConfig's 512 both): each rule is lr as given
    (variant(search__batch_size=..., search__lr_scaling={"choice": ["linear", "sqrt", "none"]}),
     "search.lr_scaling: has no effect where batch_size equals lr_base_batch (512) in every trial: each rule then "
     "uses lr as given, so every trial would train the same whatever it is; search batch_size too, or fix "
     "lr_scaling"),
    (variant(search__batch_size=..., fixed__batch_size=64, fixed__lr_base_batch=64,
             search__lr_scaling={"choice": ["linear", "none"]}),
     "search.lr_scaling: has no effect where batch_size equals lr_base_batch (64)"),
    # freeze_blocks past the model's depth: every value from the depth on freezes all blocks, so they trained alike
    (variant(fixed__init_from="w.pt", search__freeze_blocks={"int": [0, 12]}),
     "search.freeze_blocks: int [0, 12] reaches 12, past the 4 blocks of the deepest model the trials can draw: from "
     "4 on it freezes every block (only the head trains), so every value from 4 on trains the same; search at most 4"),
    (variant(fixed__init_from="w.pt", search__depth={"int": [2, 6]}, search__freeze_blocks={"choice": [0, 3, 7]}),
     "search.freeze_blocks: choice [0, 3, 7] reaches 7, past the 6 blocks of the deepest model"),
    (variant(fixed__init_from="w.pt", fixed__model=..., search__model={"choice": ["vit_micro", "vit_small"]},
             search__freeze_blocks={"int": [0, 24]}),
     "search.freeze_blocks: int [0, 24] reaches 24, past the 12 blocks of the deepest model"),
    # Optuna's step beside a range: "must be one distribution" did not say what was extra
    (variant(search__batch_size={"int": [32, 128], "step": 32}),
     "search.batch_size: unknown key 'step' beside int; a distribution takes only its [low, high] or its list of "
     "choices (for steps, list the values as a choice; for a log scale, use loguniform or int-log)"),
    # a bound of .nan: "must have low < high (empty or inverted range)"
    (variant(search__lr={"loguniform": [float("nan"), 1e-2]}),
     "search.lr.loguniform is [nan, 0.01], but its bounds must be finite numbers"),
    (variant(search__aug_strength={"uniform": [0.0, float("inf")]}),
     "search.aug_strength.uniform is [0.0, inf], but its bounds must be finite numbers"),
    # drop_path where every model has one block: timm's rates rise from 0 at the first block, so it is never dropped
    (variant(fixed__depth=1, search__drop_path={"uniform": [0.0, 0.3]}),
     "search.drop_path: has no effect where every trial's model has one block (depth 1): stochastic depth rises from 0 "
     "at the first block (timm's rule), so a lone block is never dropped and every trial would train the same "
     "whatever is drawn; fix drop_path, or search deeper models"),
    (variant(search__depth={"choice": [1]}, search__drop_path={"uniform": [0.0, 0.3]}),
     "search.drop_path: has no effect where every trial's model has one block (depth 1)"),
    # ranked by the training loss, keys that change that loss itself: the trials' values measured different things
    (variant(metric="train_loss", mode="min", search__label_smoothing={"uniform": [0.0, 0.3]}),
     "search.label_smoothing: changes the training loss itself (smoothed targets raise its floor), so with metric "
     "train_loss the trials' values are not comparable: the search would rank what each trial's loss measures, not "
     "how good its model is; rank by val_acc or val_loss, or fix label_smoothing"),
    (variant(metric="train_loss", mode=..., search__aug_strength={"uniform": [0.0, 1.0]}),
     "search.aug_strength: changes the training loss itself (it changes the training images, and from strength 2/6 "
     "on Mixup and CutMix mix their targets)"),
    (variant(metric="train_loss", mode=..., search__teacher={"choice": [None, "results/t"]}),
     "search.teacher: changes the training loss itself (a teacher adds the distillation term)"),
]


@pytest.mark.parametrize("raw, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_spaces_are_rejected_with_the_rule(raw, message):
    with pytest.raises(SpaceError) as caught:
        parse_space(raw, origin="bad.yaml")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_widths_and_head_counts_that_some_trials_can_build_are_kept():
    """A searched width with a searched head count where some pairs fit (48/3, 32/4): kept, as are ranges whose
    every value builds with some of the others' values."""
    for search in ({"embed_dim": {"choice": [32, 48]}, "num_heads": {"choice": [3, 4]}},
                   {"embed_dim": {"int": [30, 40]}, "num_heads": {"choice": [1, 4]}},
                   {"embed_dim": {"int-log": [32, 4096]}, "num_heads": {"int": [1, 2]}},
                   {"num_heads": {"choice": [2, 8]}}):
        assert parse_space(variant(search=search)).search.keys() == search.keys()


def test_distillation_keys_that_some_trials_use_are_kept():
    """A teacher searched with none among its choices, soft distillation searched, lr scaling searched with none
    among its choices: the keys act in some trials."""
    for extra in ({"teacher": {"choice": [None, "results/t"]}, "distill_weight": {"uniform": [0.1, 0.9]}},
                  {"teacher": {"choice": ["results/t"]}, "distill_mode": {"choice": ["hard", "soft"]},
                   "distill_temperature": {"uniform": [1.0, 5.0]}},
                  {"lr_scaling": {"choice": ["none", "sqrt"]}, "lr_base_batch": {"int-log": [64, 1024]}},
                  {"lr_scaling": {"choice": ["linear", "sqrt"]}}):  # (with the batch searched)
        search = {**variant()["search"], **extra}
        assert parse_space(variant(search=search)).search.keys() == search.keys()


def test_loss_changing_keys_are_kept_where_the_search_ranks_by_validation_or_fixes_them():
    """label_smoothing and aug_strength searched under val_acc or val_loss (measured alike in every trial), and
    fixed under train_loss (one loss for all trials): kept."""
    loss_keys = {"label_smoothing": {"uniform": [0.0, 0.3]}, "aug_strength": {"uniform": [0.0, 1.0]}}
    for metric in ("val_acc", "val_loss"):
        search = {**variant()["search"], **loss_keys}
        assert parse_space(variant(metric=metric, mode=..., search=search)).search.keys() == search.keys()
    space = parse_space(variant(metric="train_loss", mode=..., fixed__label_smoothing=0.2, fixed__aug_strength=0.7))
    assert space.metric == "train_loss" and space.fixed["label_smoothing"] == 0.2


def test_drop_path_is_kept_where_some_trial_has_more_than_one_block():
    """A searched drop_path with a depth range reaching past 1, or the model's own depth (vit_micro's 4): kept."""
    for extra in ({"depth": {"int": [1, 3]}}, {"depth": {"choice": [1, 2]}}, {}):
        search = {**variant()["search"], **extra, "drop_path": {"uniform": [0.0, 0.3]}}
        assert parse_space(variant(search=search)).search.keys() == search.keys()


def test_freeze_blocks_up_to_the_deepest_model_is_kept():
    """Up to the depth of the deepest model the trials can draw, each freeze_blocks value trains differently in
    some trial: kept (vit_micro has 4 blocks; a searched depth or model reaches further)."""
    for fixed, extra in (({}, {}), ({}, {"depth": {"int": [2, 12]}}), ({"depth": 8}, {}),
                         ({}, {"model": {"choice": ["vit_micro", "vit_small"]}})):
        top = 12 if extra else fixed.get("depth", 4)
        search = {**variant()["search"], **extra, "freeze_blocks": {"int": [0, top]}}
        fixed = {**variant()["fixed"], **fixed, "init_from": "w.pt"}
        raw = variant(search=search, fixed={k: v for k, v in fixed.items() if k not in extra})
        assert parse_space(raw).search["freeze_blocks"].high == top


def test_good_space_and_defaults_point():
    space = parse_space(GOOD)
    assert space.defaults_point() == {"lr": 1e-3, "batch_size": 512}  # 512 lies outside: still the first trial
    assert space.trial_config({"lr": 3e-4, "batch_size": 32}).epochs == 4


@pytest.mark.parametrize("changes, kept, note", [
    ({}, {"choice": [32, 64]}, "the recommended defaults' batch_size 512 is more than the 300 training images of "
                               "'digits': that trial will fail"),
    ({"search__batch_size": {"choice": [32, 64]}, "fixed__data_subset": 600}, {"choice": [32, 64]}, None),
    ({"search__batch_size": {"choice": [32, 128, 512, 1024]}}, {"choice": [32, 128]},
     "batch_size 512, 1024 left out of the search: more than the 300 training images of 'digits' (the "
     "recommended defaults' batch 512 too: that trial will fail)"),
    ({"search__batch_size": {"int-log": [16, 4096]}}, {"int-log": [16, 300]}, "batch_size 301-4096 left out"),
])
def test_batch_sizes_larger_than_the_data_are_left_out_of_the_search(changes, kept, note):
    space = parse_space(variant(**changes))
    fitted, said = space.fit_to_data(space.fixed.get("data_subset", 300), "digits")
    (kind, values), = kept.items()
    dist = fitted.search["batch_size"]
    assert dist.kind == kind and (list(dist.choices) if kind == "choice" else [dist.low, dist.high]) == values
    assert said is None if note is None else note in said
    assert fitted.search["lr"] == space.search["lr"] and fitted.source == space.source


@pytest.mark.parametrize("changes, message", [
    ({"search__batch_size": {"choice": [512, 1024]}},
     "search.batch_size: every choice of [512, 1024] is more than the 300 training images of 'digits'"),
    ({"search__batch_size": {"int": [400, 800]}}, "search.batch_size: its low 400 is more than the 300"),
    ({"search__batch_size": ..., "fixed__batch_size": 301}, "fixed.batch_size is 301, more than the 300"),
    ({"search__batch_size": ...}, "batch_size is TrainConfig's 512 in every trial (the space neither fixes nor "
                                  "searches it), more than the 300 training images of 'digits'; fix it"),
])
def test_a_batch_size_the_data_cannot_fill_is_a_space_error(changes, message):
    with pytest.raises(SpaceError, match=re.escape(message)):
        parse_space(variant(**changes)).fit_to_data(300, "digits")


def test_shipped_spaces_load_by_name():
    for name in ("quickstart", "vit_tiny", "vit_small.yaml"):
        space = load_space(name)
        assert {"lr", "warmup_epochs", "weight_decay", "aug_strength", "batch_size"} <= set(space.search)
    assert load_space("vit_small").fixed["model"] == "vit_small"


def test_a_space_file_is_found_without_its_suffix(tmp_path, monkeypatch):
    """`--space mine` for ./mine.yaml (or ./mine.yml) was "not found"; a shipped name still means the shipped space."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({**GOOD, "num_samples": 3}))
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(GOOD))
    assert load_space("mine").num_samples == 3
    assert load_space("quickstart").name == "quickstart"  # the shipped one, not ./quickstart.yaml
    with pytest.raises(SpaceError, match="search space 'nothing' not found"):
        load_space("nothing")


@pytest.mark.parametrize("content, message", [
    ("name: t\nsearch: {lr: {loguniform: [1e-4, 1e-2]}\n", "is not valid YAML at line"),
    ("- a list\n", "must be a mapping"),
])
def test_cli_reports_bad_space_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "space.yaml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(SpaceError, match="quickstart.yaml"):
        load_space("no_such_space")


def test_an_installed_vitsearch_finds_the_shipped_spaces(tmp_path):
    """A non-editable install (a wheel, `pip install git+...`) has no repository around it: the spaces ship
    in the package, and the installed `vitsearch` command (and `python -m vitsearch`) finds them by name
    from any folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "vitsearch", src / "vitsearch", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(src)], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in (site / "vitsearch" / "search_spaces").glob("*.yaml")) == [
        "quickstart.yaml", "vit_small.yaml", "vit_tiny.yaml"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    loaded = subprocess.run([sys.executable, "-c", "import vitsearch.space as s; "
                             "print(s.__file__, s.load_space('quickstart').fixed['model'])"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert loaded.stdout.split() == [str(site / "vitsearch" / "space.py"), "vit_micro"], loaded.stderr
    for command in ([str(site / "bin" / "vitsearch")], [sys.executable, "-m", "vitsearch"]):
        proc = subprocess.run([*command, "search", "--space", "nosuch"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "quickstart.yaml, vit_small.yaml, vit_tiny.yaml" in proc.stderr and "Traceback" not in proc.stderr
        assert not (work / "results").exists()
    # and it trains, writing results/ in the folder it runs from
    proc = subprocess.run([str(site / "bin" / "vitsearch"), "train", "--set", "model=vit_micro", "--set", "epochs=1",
                           "--set", "data_subset=300", "--set", "batch_size=64", "--name", "r"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "results" / "r" / "epochs.parquet").is_file()
