"""The search end to end through `python main.py search`, with real Ray, real Optuna storage, real timm."""

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from vitsearch.config import TrainConfig, load_config
from vitsearch.report import EPOCH_COLUMNS, TRIAL_COLUMNS, config_dtypes
from vitsearch.search import asha_continue, rung_cutoff

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny", "metric": "val_acc", "mode": "max", "num_samples": 8, "seed": 0,
    "scheduler": {"max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"model": "vit_micro", "data": "digits", "image_size": 8, "patch_size": 2, "data_subset": 600,
              "val_fraction": 0.2, "lr_scaling": "none", "grad_clip": 0.0},
    "search": {
        "lr": {"loguniform": [1.0e-4, 1.0e6]},  # the top of this range diverges (non-finite loss)
        "warmup_epochs": {"uniform": [0.0, 1.0]},
        "weight_decay": {"loguniform": [0.01, 0.3]},
        "aug_strength": {"uniform": [0.0, 0.5]},
        "batch_size": {"choice": [32, 64]},
    },
}


def search(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "search", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def best_of(trials):
    """The full-budget trial of the highest final val_acc; a tie (this search's trials often share one at chance)
    to the lower final val_loss, then the earlier trial. Spelled out here, not `report.best_trial`, to check it."""
    done = trials[trials["status"] == "completed"]
    return done.sort_values(["final_val_acc", "final_val_loss", "optuna_number"], ascending=[False, True, True]).iloc[0]


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = search("--space", str(root / "tiny.yaml"), "--out", str(root), "--name", "exp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "exp", proc


def _rungs(*milestones):
    return [(m, {}) for m in sorted(milestones, reverse=True)], {}


def test_a_rung_keeps_only_its_top_fraction():
    # reduction factor 3: among n trials at a rung the top floor(n / 3) go on, at least the best one
    rungs, unopposed = _rungs(2, 6)
    assert asha_continue(rungs, unopposed, "a", 2, 0.5, 3)  # first at the rung: nobody to compare with
    assert not asha_continue(rungs, unopposed, "b", 2, 0.4, 3)  # 2 there: only the best goes on
    assert asha_continue(rungs, unopposed, "c", 2, 0.6, 3)
    assert not asha_continue(rungs, unopposed, "d", 2, 0.55, 3)  # 4 there, top 1: 0.6
    assert not asha_continue(rungs, unopposed, "e", 2, 0.52, 3)
    assert asha_continue(rungs, unopposed, "f", 2, 0.58, 3)  # 6 there: the top 2 are 0.6 and 0.58
    assert rung_cutoff([0.1, float("nan"), 0.3], 3) == 0.3 and rung_cutoff([], 3) is None


def test_a_trial_that_went_on_unopposed_stops_once_outranked_at_its_rung():
    rungs, unopposed = _rungs(2, 6, 18)
    assert asha_continue(rungs, unopposed, "first", 2, 0.2, 3)  # alone at epoch 2 (like the defaults): goes on
    assert asha_continue(rungs, unopposed, "first", 3, 0.25, 3)  # still nobody else at rung 2
    assert asha_continue(rungs, unopposed, "better", 2, 0.7, 3)
    assert not asha_continue(rungs, unopposed, "first", 4, 0.3, 3)  # outranked at its last rung: stops at 4
    assert asha_continue(rungs, unopposed, "better", 5, 0.8, 3)  # the best at a rung never stops
    assert asha_continue(rungs, unopposed, "better", 6, 0.85, 3)  # next rung, first there


def test_luck_at_an_earlier_rung_is_checked_until_merit_at_a_later_one():
    rungs, unopposed = _rungs(2, 6, 18)
    assert asha_continue(rungs, unopposed, "fast", 2, 0.1, 3)  # alone at rung 2
    assert asha_continue(rungs, unopposed, "fast", 6, 0.2, 3)  # alone at rung 6 too: both on luck
    assert asha_continue(rungs, unopposed, "slow", 2, 0.5, 3)
    assert not asha_continue(rungs, unopposed, "fast", 7, 0.2, 3)  # outranked at rung 2, where it was lucky
    # a trial on top among 3 at its last rung has earned it: its luck at rung 2 is no longer checked
    rungs, unopposed = _rungs(2, 6, 18)
    assert asha_continue(rungs, unopposed, "early", 2, 0.1, 3)
    for other, value in (("x", 0.05), ("y", 0.04)):
        asha_continue(rungs, unopposed, other, 6, value, 3)
    assert asha_continue(rungs, unopposed, "early", 6, 0.3, 3)  # best of 3 at rung 6
    asha_continue(rungs, unopposed, "z", 2, 0.9, 3)
    assert asha_continue(rungs, unopposed, "early", 7, 0.31, 3)


def test_the_cost_estimate_simulates_asha_over_the_trial_slots():
    from vitsearch.search import expected_trial_epochs
    from vitsearch.space import load_space

    space = load_space("quickstart")  # 16 trials, rungs 2 / 6 / 18 of 20 epochs
    epochs, epoch_times = expected_trial_epochs(space, 1)
    assert epoch_times == epochs  # one slot: one trial-epoch after the other
    epochs, epoch_times = expected_trial_epochs(space, 2)
    assert 16 * 2 < epochs < 16 * 20  # every trial reaches the first rung; ASHA stops most of them
    assert epochs / 2 < epoch_times < epochs  # two at a time, but the last trial runs alone at the end
    epochs, epoch_times = expected_trial_epochs(space, 16)
    assert epoch_times <= space.max_epochs < epochs  # all at once: as long as the longest trial


def test_the_cost_estimate_of_a_large_search_is_scaled_from_a_smaller_one(monkeypatch):
    """A space of 1,000 trials waited 35 s for its plan (the simulation's cost grows with the square of
    the trials), one of 5,000 many minutes. Beyond 64 trials it simulates 64, with the slots in proportion."""
    from dataclasses import replace

    from vitsearch.search import SIMULATED_TRIALS, expected_trial_epochs
    from vitsearch.space import load_space

    space = load_space("quickstart")
    small = expected_trial_epochs(replace(space, num_samples=SIMULATED_TRIALS), 2)
    assert expected_trial_epochs(replace(space, num_samples=100 * SIMULATED_TRIALS), 200) == pytest.approx(
        (100 * small[0], small[1]))
    huge = expected_trial_epochs(replace(space, num_samples=10 ** 6), 2)
    assert huge[0] == pytest.approx(10 ** 6 / SIMULATED_TRIALS * expected_trial_epochs(
        replace(space, num_samples=SIMULATED_TRIALS), 1)[0]) and huge[0] / 2 <= huge[1] < huge[0]
    scaled = expected_trial_epochs(replace(space, num_samples=128), 4)
    assert scaled == pytest.approx((2 * small[0], small[1]))
    import vitsearch.search  # the whole simulation of 128 trials (1.2 s) gives about the same
    monkeypatch.setattr(vitsearch.search, "SIMULATED_TRIALS", 10 ** 9)
    exact = expected_trial_epochs(replace(space, num_samples=128), 4, simulations=50)
    assert scaled == pytest.approx(exact, rel=0.1)


def test_the_cost_estimate_of_a_long_budget_skips_the_epochs_where_nothing_changes(monkeypatch):
    """`scheduler.max_epochs: 100000` (a typo's zeros) kept the plan waiting for many minutes after its first line:
    the simulation stepped through every epoch of the trials ASHA keeps. Between rungs nothing it decides by
    changes, so it skips those epochs, with the same figures as stepping through each one."""
    from dataclasses import replace

    import vitsearch.search
    from vitsearch.search import expected_trial_epochs
    from vitsearch.space import load_space

    quickstart = load_space("quickstart")
    spaces = [replace(quickstart, max_epochs=max_epochs, grace_period=grace, reduction_factor=factor, num_samples=n)
              for max_epochs, grace, factor, n in ((20, 2, 3, 16), (50, 5, 3, 32), (81, 1, 3, 40), (200, 2, 3, 16),
                                                   (30, 1, 4, 3), (7, 7, 2, 16))]
    skipping = [expected_trial_epochs(space, slots) for space in spaces for slots in (1, 2, 5)]
    with monkeypatch.context() as patch:
        calls = iter(range(10 ** 9))  # a state that changes at every epoch: the simulation steps through each one
        patch.setattr(vitsearch.search, "_asha_state", lambda rungs, unopposed: next(calls))
        assert [expected_trial_epochs(space, slots) for space in spaces for slots in (1, 2, 5)] == skipping
    long = expected_trial_epochs(replace(quickstart, max_epochs=10 ** 7), 2)
    assert 10 ** 7 < long[0] < 10 ** 7 + 16 * 20 and 10 ** 7 <= long[1] < long[0]  # the best trial runs them all


def test_the_search_scheduler_applies_the_rule_inside_ray():
    from ray.tune.schedulers import TrialScheduler

    from vitsearch.search import _scheduler_class

    class Trial:  # the scheduler reads only the id of Ray's Trial
        def __init__(self, trial_id):
            self.trial_id = trial_id

    scheduler = _scheduler_class()(time_attr="epoch", metric="val_acc", mode="max", max_t=20, grace_period=2,
                                   reduction_factor=3)
    first, second = Trial("first"), Trial("second")
    for trial in (first, second):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, first, {"epoch": 2, "val_acc": 0.2}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, second, {"epoch": 2, "val_acc": 0.7}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, first, {"epoch": 3, "val_acc": 0.3}) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, second, {"epoch": 20, "val_acc": 0.9}) == TrialScheduler.STOP  # budget


def test_live_view_imports_the_reports_libraries_only_on_an_idle_core(monkeypatch):
    """Where the trials use every core, the reports' imports wait until every trial has started and a slot
    has fallen idle; with cores to spare they start with the first result."""
    from vitsearch import search_cli
    from vitsearch.space import load_space

    class Trial:  # the view reads only the id and status of Ray's Trial
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    imported = []
    monkeypatch.setattr(search_cli, "preload", lambda *modules: imported.append(modules))
    space = load_space("quickstart")  # 16 trials
    view = search_cli.LiveView(space, 100.0, slots=2)
    view.spare_cores = False
    trials = [Trial(f"t{i}", "TERMINATED") for i in range(13)] + [Trial("t13", "RUNNING"), Trial("t14", "RUNNING")]
    view.update(trials, trials[-1], {"epoch": 3, "val_acc": 0.5})
    assert not imported  # a trial is still to start: both cores stay with the trials
    trials[13].status = "TERMINATED"
    trials.append(Trial("t15", "RUNNING"))  # the last trial
    view.update(trials, trials[-1], {"epoch": 1, "val_acc": 0.1})
    assert not imported  # t14 and t15 run
    trials[14].status = "TERMINATED"
    view.update(trials, trials[14], None, status="TERMINATED")
    assert not imported  # waits for a result of the trial left
    view.update(trials, trials[-1], {"epoch": 2, "val_acc": 0.2})
    assert len(imported) == 1 and "matplotlib.figure" in imported[0]  # one trial left, one core idle
    view.update(trials, trials[-1], {"epoch": 3, "val_acc": 0.3})
    assert len(imported) == 1

    spare = search_cli.LiveView(space, 100.0, slots=2)
    spare.spare_cores = True
    spare.update(trials[:2], trials[0], {"epoch": 1, "val_acc": 0.1})
    assert len(imported) == 2

    spare.log_lines = False  # on a terminal: the live table
    spare.update(trials[:2], trials[1], {"epoch": 4, "val_acc": 0.25})
    head, table = spare.live.renderable.renderables
    assert head.plain.startswith("2/16 trials finished, 5 trial-epochs") and table.row_count == 2


def test_reports_have_the_documented_schema(tiny_search):
    exp, proc = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert list(trials.columns) == list(TRIAL_COLUMNS) + TrainConfig.field_names()
    assert {c: str(t) for c, t in trials.dtypes.items()} == {**TRIAL_COLUMNS, **config_dtypes()}
    assert list(epochs.columns) == list(EPOCH_COLUMNS)
    assert {c: str(t) for c, t in epochs.dtypes.items()} == EPOCH_COLUMNS
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped_early", "diverged", "failed"}
    # every trial's epochs_run matches its rows in epochs.parquet
    counts = epochs.groupby("trial_id").size()
    for _, row in trials.iterrows():
        assert row["epochs_run"] == counts.get(row["trial_id"], 0)
    assert "top trials by final val_acc" in proc.stdout


def test_the_summary_table_shows_whole_values_in_an_80_column_terminal(tiny_search):
    from rich.console import Console

    from vitsearch.report import comparison_line, summary_table
    from vitsearch.space import parse_space

    trials = pd.read_parquet(tiny_search[0] / "trials.parquet")
    space = parse_space(TINY)
    trials.loc[trials["is_defaults"], "final_val_acc"] = 0.24  # shown 0.2400 (it was 0.24)
    assert "val_acc 0.2400" in comparison_line(trials, space)
    for width in (80, 200):
        console = Console(width=width, record=True)
        console.print(summary_table(trials, space, width=console.width))
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        shown = trials[(trials["status"] == "completed") | trials["is_defaults"]]
        assert len(shown) >= 2
        digits = 3 if width == 80 else 4  # the knobs to 3 significant digits where the columns are narrow
        for _, row in shown.iterrows():
            assert row["status"] in text and f"{row['lr']:.{digits}g}" in text
            assert f"{row['final_val_acc']:.4f}" in text  # the metric to 4 decimals (0.2400), as progress lines
        assert ("warmup_epochs" in text) == (width == 200)  # two-line headers only where it must


def test_trials_tied_on_the_metric_are_ranked_by_their_validation_loss_and_the_summary_says_so(tiny_search):
    """Accuracies are multiples of 1 / validation images, so full-budget trials tie (two at 0.9610 in an extended
    quickstart): the best went to the first row, and the table's unstable sort could list another first."""
    from rich.console import Console

    from vitsearch.report import best_trial, comparison_line, summary_table
    from vitsearch.space import parse_space

    trials = pd.read_parquet(tiny_search[0] / "trials.parquet")
    space = parse_space(TINY)
    row = trials[trials["status"] == "completed"].iloc[[0]]
    tied = pd.concat([row.assign(optuna_number=n, final_val_acc=0.99, final_val_loss=loss, trial_id=f"t{n}",
                                 is_defaults=False) for n, loss in ((20, 0.3), (21, 0.2), (22, 0.25))])
    tied = tied.astype(trials.dtypes.to_dict())
    ranked = pd.concat([trials, tied], ignore_index=True)
    assert best_trial(ranked, space)["optuna_number"] == 21
    assert "best #21: val_acc 0.9900 (tied with #22, #20: its final val_loss, 0.2000, is lower than 0.2500)" in \
        comparison_line(ranked, space)
    console = Console(width=200, record=True)
    console.print(summary_table(ranked, space, width=console.width))
    rows = [line.split("│")[1].strip() for line in console.export_text().splitlines() if line.count("│") > 2]
    assert rows[:3] == ["#21", "#22", "#20"]
    same = ranked.assign(final_val_loss=ranked["final_val_loss"].where(ranked["optuna_number"] != 22, 0.2))
    assert "best #21: val_acc 0.9900 (tied with #22, #20: the earlier trial)" in comparison_line(same, space)
    untied = ranked[ranked["optuna_number"] != 21]
    assert "best #22: val_acc 0.9900 (tied with #20: its final val_loss, 0.2500, is lower than 0.3000)" in \
        comparison_line(untied, space)
    alone = ranked[~ranked["optuna_number"].isin([21, 22])]
    assert "best #20: val_acc 0.9900;" in comparison_line(alone, space)


def test_stopped_trials_are_pruned_in_the_stored_study(tiny_search):
    exp, _ = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    expected = {"completed": optuna.trial.TrialState.COMPLETE, "stopped_early": optuna.trial.TrialState.PRUNED,
                "diverged": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL}
    assert len(study.trials) == 8
    for _, row in trials.iterrows():
        assert states[row["optuna_number"]] == expected[row["status"]], row["trial_id"]
    assert (trials["status"] == "stopped_early").any()
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(max(t.intermediate_values) < 4 for t in pruned)  # pruned at its last epoch, before the budget


def test_diverged_trials_are_recorded_and_scored_worst(tiny_search):
    exp, _ = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    diverged = trials[trials["status"] == "diverged"]
    assert len(diverged) >= 1 and (diverged["lr"] > 10).all()
    assert diverged["reason"].str.contains("non-finite loss").all()
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
    for number in diverged["optuna_number"]:
        assert study.trials[number].value == 0.0  # val_acc's worst


def test_defaults_trial_is_first_and_flagged(tiny_search):
    exp, _ = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    flagged = trials[trials["is_defaults"]]
    assert len(flagged) == 1
    row = flagged.iloc[0]
    defaults = TrainConfig()
    assert row["optuna_number"] == 0
    for key in TINY["search"]:
        assert row[key] == getattr(defaults, key), key
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
    first = study.trials[0]
    assert first.user_attrs["recommended_defaults"] is True
    assert first.user_attrs["outside_space.batch_size"] == 512  # outside [32, 64]: an attribute, not a param


def test_best_config_is_the_best_full_budget_trial_and_trains(tiny_search, tmp_path):
    exp, _ = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    best = best_of(trials)
    cfg = load_config(exp / "best_config.yaml")
    assert cfg.lr == pytest.approx(best["lr"]) and cfg.batch_size == best["batch_size"] and cfg.epochs == 4
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--config", str(exp / "best_config.yaml"),
                           "--set", "epochs=1", "--set", "warmup_epochs=0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_resume_after_a_killed_search_loses_and_reruns_nothing(tmp_path):
    space = {**TINY, "num_samples": 6, "scheduler": {"max_epochs": 6, "grace_period": 6, "reduction_factor": 2},
             "checkpoint_every_s": 0}
    space["fixed"] = {**TINY["fixed"], "data_subset": 1000, "image_size": 16, "patch_size": 4}  # ~0.5 s epochs
    space["search"] = {**TINY["search"], "lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    exp = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = exp / "epochs.jsonl"
    deadline = time.time() + 300
    while not log.is_file() and time.time() < deadline:
        time.sleep(0.1)
    # while it runs, a --resume of it (a second search in its folder: both used to run, and both wrote reports)
    busy = search("--resume", str(exp))
    assert busy.returncode == 2 and busy.stderr.strip() == (
        f"error: experiment {str(exp)!r} is in use by a search that is still running (pid {proc.pid}); wait for it "
        "to end, or stop it, then --resume"), busy.stdout[-2000:] + busy.stderr[-2000:]
    while time.time() < deadline:  # kill once two trials have finished and another is half-way
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        latest = {}
        for r in rows:
            latest[r["trial_id"]] = r["epoch"]
        if sum(e == 6 for e in latest.values()) >= 2 and any(3 <= e < 6 for e in latest.values()):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    finished_before = {r["trial_id"] for r in before if r["epoch"] == 6}
    assert len(finished_before) >= 2

    resumed = search("--resume", str(exp))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = [json.loads(line) for line in log.read_text().splitlines() if line.strip()][len(before):]
    final = {r["trial_id"]: r for r in before if r["epoch"] == 6}
    for r in after:  # completed trials were not trained again: at most their final result is handed back
        if r["trial_id"] in finished_before:
            assert (r["epoch"], r["val_acc"]) == (6, final[r["trial_id"]]["val_acc"])
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert (trials["status"] == "completed").sum() == 6, trials[["trial_id", "status", "reason"]].to_string()
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert len(epochs) == 36 and not epochs.duplicated(["trial_id", "epoch"]).any()
    # unfinished trials continued from their checkpoint: their first epoch after the restart is not 1
    restarted = {r["trial_id"] for r in after} - finished_before
    first_after = {t: min(r["epoch"] for r in after if r["trial_id"] == t) for t in restarted}
    assert any(epoch > 1 for epoch in first_after.values())


def test_relative_paths_are_stored_absolute_so_the_outputs_work_from_any_folder(image_folder, tmp_path):
    """`--data imagefolder:<relative path>` given in one folder: space.yaml and best_config.yaml hold the
    absolute path, so `train --config best_config.yaml` (and --resume) work from another folder. A relative
    `--storage` folder (Ray Tune takes only absolute ones: it was a pyarrow traceback) is made absolute too."""
    import shutil

    shutil.copytree(image_folder, tmp_path / "pics")
    space = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 1, "grace_period": 1},
             "fixed": {**TINY["fixed"], "data_subset": None, "image_size": 16, "patch_size": 4},
             "search": {"lr": {"loguniform": [1e-3, 3e-3]}, "batch_size": {"choice": [32]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", "s.yaml", "--data", "imagefolder:pics", "--out", "out", "--name", "e",
                  "--storage", "shared", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "out" / "e"
    run = json.loads((exp / "run.json").read_text())
    assert run["storage"] == str(tmp_path / "shared") and re.fullmatch(r"e-[0-9a-f]{8}", run["storage_dir"])
    assert (tmp_path / "shared" / run["storage_dir"] / "ray").is_dir() and not (exp / "ray").exists()
    # the report's attention maps come from the best trial's checkpoint in the storage ("not on this machine")
    assert (exp / "attention_maps.png").is_file() and not (exp / "checkpoints").exists()
    # A second search with the same --storage has a folder of its own there: the two shared Ray's experiment
    # state in `<storage>/ray`, and a resumed search restored the other one's trials.
    proc = search("--space", "s.yaml", "--data", "imagefolder:pics", "--out", "out", "--name", "e2",
                  "--storage", "shared", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    other = json.loads((tmp_path / "out" / "e2" / "run.json").read_text())["storage_dir"]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == sorted([run["storage_dir"], other])
    # The storage moved elsewhere: a resume pointed at a folder without it says where the search ran
    (tmp_path / "shared").rename(tmp_path / "moved")
    finished = (exp / "run.json").read_text()  # as a search stopped before its end has it: no "finished"
    (exp / "run.json").write_text(json.dumps({k: v for k, v in json.loads(finished).items() if k != "finished"}))
    proc = search("--resume", "out/e", "--storage", "elsewhere", cwd=tmp_path)
    assert proc.returncode == 2 and f"the search ran with --storage {tmp_path / 'shared'}: leave --storage out to " \
        "resume it there, or give the folder it was moved to" in proc.stderr, proc.stderr[-3000:]
    (exp / "run.json").write_text(finished)
    # ... which only a search that has not finished needs: a finished one shows its summary, whatever --storage
    # (it said that Ray's state was missing)
    for given in ([], ["--storage", "elsewhere"]):
        proc = search("--resume", "out/e", *given, cwd=tmp_path)
        assert proc.returncode == 0 and "the search has finished: nothing to resume" in proc.stdout, proc.stderr
    # ... and an extension run where it went keeps it in run.json, for the next --resume or --extend
    proc = search("--extend", "out/e", "--trials", "1", "--storage", "moved", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((exp / "run.json").read_text())["storage"] == str(tmp_path / "moved")
    assert (tmp_path / "moved" / run["storage_dir"] / "ray-extend-1").is_dir()
    expected = f"imagefolder:{tmp_path / 'pics'}"
    assert yaml.safe_load((exp / "space.yaml").read_text())["fixed"]["data"] == expected
    assert yaml.safe_load((exp / "best_config.yaml").read_text())["data"] == expected
    trained = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--config", str(exp / "best_config.yaml"),
                              "--out", str(tmp_path / "runs"), "--name", "r"], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr
    assert yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())["data"] == expected
    # The data moved, and space.yaml was given its new path: the one edit of space.yaml a search takes (the
    # data's fingerprint is checked instead)
    (tmp_path / "pics").rename(tmp_path / "pics2")
    original = (exp / "space.yaml").read_text()
    (exp / "space.yaml").write_text(original.replace(str(tmp_path / "pics"), str(tmp_path / "pics2")))
    proc = search("--resume", str(exp))
    assert proc.returncode == 0 and "the search has finished: nothing to resume" in proc.stdout, proc.stderr
    (tmp_path / "pics2").rename(tmp_path / "pics")
    (exp / "space.yaml").write_text(original)
    # An image added since: an extension (or resume) would train on another split; one line, nothing changed
    shutil.copy(next((tmp_path / "pics" / "class_0").iterdir()), tmp_path / "pics" / "class_0" / "added.png")
    written = {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file() and f.name != ".lock"}
    proc = search("--extend", str(exp), "--trials", "1")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.fullmatch(rf"error: the data of '{exp}' changed since the search started: '{expected}' held 96 train / "
                        r"24 val images, hash [0-9a-f]{16} then and holds 97 train / 24 val images, hash [0-9a-f]{16} "
                        r"now, so its trials' train/validation split would differ; restore the data, or start a new "
                        r"search", proc.stderr.strip()), proc.stderr
    assert {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file() and f.name != ".lock"} == written


def test_batch_sizes_are_drawn_on_a_log_axis():
    """knobs.png and parallel.png: a choice of numbers spanning 4x or more (batch sizes 32-128 and the
    defaults' 512) goes on a log axis, where 32, 64 and 128 do not crowd together; other choices do not."""
    from vitsearch.figures import _doubling_choice
    from vitsearch.space import parse_space

    space = parse_space({"metric": "val_acc", "mode": "max", "num_samples": 4, "scheduler": {"max_epochs": 2},
                         "search": {"batch_size": {"choice": [32, 64, 128]}, "lr_scaling": {"choice": ["none", "sqrt"]},
                                    "label_smoothing": {"choice": [0.1, 0.2]}, "lr": {"uniform": [0.001, 0.01]}}},
                        origin="s.yaml")
    trials = pd.DataFrame({"batch_size": [512, 32, 64, 128], "lr_scaling": ["linear", "none", "sqrt", "none"],
                           "label_smoothing": [0.1, 0.1, 0.2, 0.2], "lr": [0.001, 0.002, 0.004, 0.008]})
    assert [_doubling_choice(space, k, trials[k]) for k in trials] == [True, False, False, False]
    assert not _doubling_choice(space, "batch_size", pd.Series([64, 128]))  # a span under 4x stays linear


def test_resume_of_a_folder_that_is_no_experiment(tmp_path):
    proc = search("--resume", str(tmp_path))
    assert proc.returncode == 2 and "is not a vitsearch experiment folder" in proc.stderr


def test_html_report_shows_the_parquet_numbers(tiny_search, tmp_path):
    exp, _ = tiny_search
    page = (exp / "report.html").read_text()
    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    for name in ("learning_curves.png", "knobs.png", "importance.png", "parallel.png", "best_trial.png",
                 "attention_maps.png"):
        data = (exp / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert page.count("data:image/png;base64,") == 6 and "<script" not in page  # self-contained, offline
    best = best_of(trials)
    assert f"{best['final_val_acc']:.4f} (Optuna #{best['optuna_number']})" in page
    assert f"the best trial (Optuna #{best['optuna_number']}), from its final checkpoint" in page
    assert f"<td>trial-epochs run</td><td>{len(epochs)}</td>" in page
    assert f"<td>completed</td><td>{(trials['status'] == 'completed').sum()}</td>" in page
    assert "Best trial against the recommended defaults" in page
    # `report` re-renders the same page from the folder alone (no Ray)
    (exp / "report.html").unlink()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(exp)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (exp / "report.html").read_text().count("data:image/png;base64,") == 6


def test_html_report_writes_large_figures_whole_and_metrics_to_four_decimals(tiny_search, tmp_path):
    """report.html wrote every float to 4 significant digits: a GPU's 12,346 images/s read "1.235e+04", and a
    val_acc of 0.961 read "0.961" where the terminal says 0.9610. Now figures from 1,000 on are whole, with
    thousands marked, and the metrics have 4 decimals, as in the terminal."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("ray", "checkpoints"))
    trials = pd.read_parquet(copy / "trials.parquet")
    trials["images_per_s"] = 12345.6
    trials["wall_time_s"] = 1234.4
    trials.to_parquet(copy / "trials.parquet", index=False)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(copy)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = re.sub(r"data:image/png;base64,[^\"']+", "", (copy / "report.html").read_text())
    assert "e+0" not in page
    assert f"<td>sum of trial wall times (s)</td><td>{1234.4 * len(trials):,.0f}</td>" in page
    best, defaults = best_of(trials), trials[trials["is_defaults"]].iloc[0]
    assert "<td>images_per_s</td><td>12,346</td><td>12,346</td><td>0</td>" in page
    assert "<td>wall_time_s</td><td>1,234</td><td>1,234</td><td>0</td>" in page
    for key in ("final_val_acc", "best_val_acc", "final_val_loss"):
        diff = best[key] - defaults[key]
        assert f"<td>{key}</td><td>{best[key]:.4f}</td><td>{defaults[key]:.4f}</td><td>{diff:+.4f}</td>" in page
    assert f"<tr><td>#{best['optuna_number']}</td><td>{best['final_val_acc']:.4f}</td>" in page  # top trials


def test_the_importance_estimate_says_how_many_completed_trials_it_rests_on(tiny_search, tmp_path):
    """Optuna's evaluator, given one completed trial, warns and calls every knob equally important; the
    report says there is no estimate instead, and prints no warning. Given no more completed trials than
    knobs, its forest ranks them by chance (2 trials over 3 knobs: 0.50 / 0.50 / 0): the report says so. Given
    trials that all reached the same value, it split the importance evenly; the report says there is nothing to
    rank."""
    import shutil

    exp, _ = tiny_search
    assert "<th>knob</th><th>importance</th>" in (exp / "report.html").read_text()
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("ray", "checkpoints"))
    knobs = {k: optuna.distributions.FloatDistribution(1e-4, 1.0) for k in ("lr", "weight_decay")}
    pages = []
    for values in ([0.5], [0.5, 0.7], [0.5, 0.7, 0.6, 0.9], [0.5] * 4):
        (copy / "study.db").unlink()
        study = optuna.create_study(study_name=exp.name, storage=f"sqlite:///{copy / 'study.db'}",
                                    direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        for value in values:
            study.tell(study.ask(knobs), value)
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(copy)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr, proc.stderr
        pages.append((copy / "report.html").read_text())
    assert "<th>knob</th><th>importance</th>" not in pages[0]
    assert "over the 2 trials the study holds as complete (full budget, and diverged ones at the worst value): " \
           "fewer than the 2 knobs plus one, so this ranking is a guess" in pages[1]
    assert "over the 4 trials the study holds as complete" in pages[2] and "this ranking is a guess" not in pages[2]
    # every complete trial at the same value (a short search at chance): it ranked the knobs 0.50 / 0.50
    assert "Importance: none: every one of the 4 complete trials has the same val_acc, 0.5: there is nothing to " \
           "rank." in pages[3] and "<th>knob</th><th>importance</th>" not in pages[3]
    assert "Importance: none: not enough completed trials for an importance estimate." in pages[0]


def test_a_search_in_which_no_trial_learned_says_so(tiny_search, tmp_path):
    """A 3-epoch search on val_loss ended "best #0: val_loss 2.3315" (val_acc 0.12, chance 0.13) and wrote its
    best_config.yaml without a word that no trial had learned anything. Now the summary and report.html say so;
    a search whose trials learned says nothing."""
    from vitsearch.report import chance_note

    space = {**TINY, "num_samples": 3, "metric": "val_loss", "mode": "min",
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**TINY["fixed"], "data_subset": 300, "warmup_epochs": 0.0, "batch_size": 64, "min_lr": 0.0},
             "search": {"lr": {"loguniform": [1.0e-9, 1.0e-8]}}}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "flat.yaml"), "--out", str(tmp_path), "--name", "flat")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    said = re.search(r"note: no trial learned anything measurable: the highest val_acc any trial reached, "
                     r"(0\.\d{4}), is within chance \(always answering the most common class scores (0\.\d{4}) on "
                     r"the 359 validation images, and two standard errors are (0\.\d{4})\), so the best config is no "
                     r"better than a guess; give the trials more epochs \(scheduler.max_epochs\), more data, or a "
                     r"shorter warmup or a higher lr",
                     " ".join(proc.stdout.split()))
    assert said, proc.stdout[-2000:]
    reached, chance, margin = map(float, said.groups())
    trials = pd.read_parquet(tmp_path / "flat" / "trials.parquet")
    assert reached == round(trials["best_val_acc"].max(), 4) and reached <= chance + margin
    assert "<p class='note'>No trial learned anything measurable: the highest val_acc" in \
        (tmp_path / "flat" / "report.html").read_text()
    # tiny_search (8 trials of 4 epochs on 600 digits at 8 px) mostly learns nothing, but where its trials finish in
    # another order TPE proposes otherwise, and in one CI run a trial got past chance: the note is there exactly where
    # the highest val_acc of its trials is within chance (42 of the 359 validation images are of the most common
    # class); where a trial learned, or the validation images are of one class (which nothing beats), there is none
    exp, proc = tiny_search
    reached = pd.read_parquet(exp / "trials.parquet")["best_val_acc"].max()
    noted = re.search(r"note: no trial learned anything measurable: the highest val_acc any trial reached, (0\.\d{4})",
                      " ".join(proc.stdout.split()))
    assert (noted is not None) == (chance_note(reached, 42, 359) is not None), (reached, proc.stdout[-2000:])
    assert noted is None or float(noted.group(1)) == round(reached, 4)
    assert chance_note(0.1170 + 0.0339, 42, 359) is not None and chance_note(0.1170 + 0.0340, 42, 359) is None
    assert chance_note(1.0, 1, 1) is None and chance_note(float("nan"), 42, 359) is None


def test_a_report_on_val_loss_compares_it_once(tiny_search, tmp_path):
    """The best-against-defaults table lists the metric, best val_acc and final val_loss: a search on val_loss
    listed final_val_loss twice."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("ray", "checkpoints"))
    space = yaml.safe_load((copy / "space.yaml").read_text())
    (copy / "space.yaml").write_text(yaml.safe_dump({**space, "metric": "val_loss", "mode": "min"}))
    run = json.loads((copy / "run.json").read_text())  # (as if the search had been started on val_loss)
    (copy / "run.json").write_text(json.dumps({**run, "space": {**run["space"], "metric": "val_loss", "mode": "min"}}))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(copy)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (copy / "report.html").read_text()
    assert page.count("<td>final_val_loss</td>") == 1 and page.count("<td>best_val_acc</td>") == 1


def test_an_experiment_made_before_a_space_check_is_still_reported(tiny_search, tmp_path):
    """Checks that refuse a new space for wasting its trials (here batch_size on a uniform scale, which drew
    fractions) do not refuse an experiment already made with such a space: its trials ran, its report is due."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("ray", "checkpoints"))
    space = yaml.safe_load((copy / "space.yaml").read_text())
    space["search"]["batch_size"] = {"uniform": [32, 64]}
    (copy / "space.yaml").write_text(yaml.safe_dump(space))
    run = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**run, "space": json.loads(json.dumps(space))}))
    assert search("--space", str(copy / "space.yaml"), "--out", str(tmp_path)).returncode == 2  # refused anew
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(copy)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Best trial against the recommended defaults" in (copy / "report.html").read_text()


def test_report_of_a_folder_that_is_no_experiment(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "is not a finished vitsearch experiment" in proc.stderr


def test_a_finished_search_that_lost_a_parquet_file_gets_it_back_from_resume(tiny_search, tmp_path):
    """`report` on a finished search whose epochs.parquet was deleted says to `--resume` it; that resume
    printed the summary of a finished search and failed with a traceback (FileNotFoundError). It now
    writes the reports again, from the trials' records, training nothing."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy)
    (copy / "epochs.parquet").unlink()
    report = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(copy)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 2 and f"continue it with: python main.py search --resume {copy}" in report.stderr
    proc = search("--resume", str(copy))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    keys = ["trial_id", "epoch", "val_acc"]
    assert pd.read_parquet(copy / "epochs.parquet")[keys].equals(pd.read_parquet(exp / "epochs.parquet")[keys])
    assert pd.read_parquet(copy / "trials.parquet")["epochs_run"].sum() == \
        pd.read_parquet(exp / "trials.parquet")["epochs_run"].sum()


@pytest.fixture
def read_only(tmp_path):
    """`read_only(folder)`: the folder as a read-only bind mount (root ignores file modes); skipped where
    this process may not mount."""
    mounts = []

    def make(folder: Path) -> Path:
        target = tmp_path / f"ro-{folder.name}"
        target.mkdir()
        for cmd in (["mount", "--bind", str(folder), str(target)], ["mount", "-o", "remount,ro,bind", str(target)]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                subprocess.run(["umount", str(target)], capture_output=True)
                pytest.skip("cannot make a read-only bind mount here")
        mounts.append(target)
        return target

    yield make
    for target in mounts:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_read_only_experiment_or_run_is_one_line(tiny_search, tmp_path, read_only):
    """On a read-only folder (a colleague's results, a mounted archive) `report` and `search --extend`
    failed with a traceback: removing the temporary file of the failed write raised too, and hid the
    error. `--extend` and `train --resume` now say so before Ray starts or training begins."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    run = tmp_path / "runs" / "r"
    made = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--set", "model=vit_micro", "image_size=8",
                           "patch_size=2", "data_subset=300", "batch_size=64", "epochs=2", "--out",
                           str(run.parent), "--name", "r"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    epochs = pd.read_parquet(run / "epochs.parquet")
    epochs.head(1).to_parquet(run / "epochs.parquet", index=False)  # as if stopped after epoch 1 of 2
    ro_exp, ro_run = read_only(copy), read_only(run)
    before = {p.name: p.stat().st_mtime for p in copy.iterdir()}
    cases = {("report", str(ro_exp)): f"error: cannot write '{ro_exp}/learning_curves.png': Read-only file system; "
             "earlier files are kept",
             ("search", "--extend", str(ro_exp), "--trials", "2"): f"error: --extend '{ro_exp}': cannot make a "
             f"folder in '{ro_exp}' (Read-only file system)",
             ("train", "--resume", str(ro_run)): f"error: --resume '{ro_run}': cannot make a "
             f"folder in '{ro_run}' (Read-only file system)"}
    for args, line in cases.items():
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stderr.strip() == line, (args, proc.stdout[-1000:], proc.stderr[-2000:])
        assert "probe:" not in proc.stdout  # before the throughput probe and Ray's start
    assert {p.name: p.stat().st_mtime for p in copy.iterdir()} == before


@pytest.mark.parametrize("command", ["report", "reproduce", "extend"])
def test_report_of_a_search_still_running_or_stopped_before_its_reports_says_which(tiny_search, tmp_path, command):
    """`report` (and `reproduce --from`) on an experiment without its reports said it was no finished
    experiment: a search that still runs in it is named with its pid, one killed before its reports
    gets the --resume command. (`search --extend` said "use --resume first", also while the search ran.)"""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / exp.name
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("ray", "checkpoints", "*.parquet", "report.html",
                                                             "best_config.yaml", ".lock"))
    args = {"report": ["report", str(copy)], "reproduce": ["reproduce", "--from", str(copy), "--seeds", "1"],
            "extend": ["search", "--extend", str(copy), "--trials", "1"]}[command]

    def run():
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                              timeout=300)

    proc = run()
    assert proc.returncode == 2, proc.stderr
    assert "its search stopped before writing its reports; continue it with: python main.py search --resume " \
        f"{copy}" in proc.stderr, proc.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from vitsearch.files import lock_experiment; lock_experiment(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(120)", str(copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run()
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    assert f"its search is still running (pid {holder.pid})" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(copy.glob("*.parquet"))
    assert not (copy / "report.html").exists()


def test_extend_adds_trials_that_learn_from_the_earlier_ones(tiny_search, tmp_path):
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / "exp"  # the study is named after the folder: keep the name
    shutil.copytree(exp, copy)
    before = pd.read_parquet(copy / "trials.parquet")
    proc = search("--extend", str(copy), "--trials", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = pd.read_parquet(copy / "trials.parquet")
    assert len(after) == len(before) + 3 and after["trial_id"].is_unique
    assert set(before["trial_id"]) <= set(after["trial_id"])
    assert sorted(after["optuna_number"]) == list(range(len(before) + 3))
    assert after["is_defaults"].sum() == 1  # no second defaults trial
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{copy / 'study.db'}")
    assert len(study.trials) == len(before) + 3
    epochs = pd.read_parquet(copy / "epochs.parquet")
    assert set(epochs["trial_id"]) <= set(after["trial_id"])
    new = after[~after["trial_id"].isin(before["trial_id"])]
    counts = epochs.groupby("trial_id").size()
    for _, row in new.iterrows():  # the new trials ran and are reported like the old ones
        assert row["status"] in {"completed", "stopped_early", "diverged", "failed"}
        assert row["epochs_run"] == counts.get(row["trial_id"], 0)
    assert "report.html" in {p.name for p in copy.iterdir()}
    settings = html.unescape(" ".join(re.sub("<[^>]+>", " ", (copy / "report.html").read_text()).split()))
    assert f"trials {len(before)} + 3 added by --extend (1 run)" in settings  # it said the space's 8 alone
    # --resume of the extended search continues the extension (3 trials, all ended): it reports the same
    # trials again instead of calling the search interrupted with 3 of the space's 8 trials finished.
    again = search("--resume", str(copy))
    assert again.returncode == 0 and "interrupted" not in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert pd.read_parquet(copy / "trials.parquet")["trial_id"].tolist() == after["trial_id"].tolist()


def test_an_extension_that_was_stopped_is_resumed_before_another(tiny_search, tmp_path):
    """A second --extend after one that was stopped (Ctrl-C) started a new extension beside it: the stopped
    one's finished trials never reached the reports, and its running ones stayed RUNNING in the study."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    rows = len((copy / "epochs.jsonl").read_text().splitlines())
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--extend", str(copy), "--trials", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len((copy / "epochs.jsonl").read_text().splitlines()) == rows:  # an epoch of the extension
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out, out[-2000:] + err[-2000:]
    again = search("--extend", str(copy), "--trials", "2")
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: --extend {str(copy)!r}: its last --extend (of 4 trials) was stopped before it finished; continue "
        f"it with: python main.py search --resume {copy}, then --extend again"), again.stderr
    assert not (copy / "ray-extend-2").exists()
    resumed = search("--resume", str(copy))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    trials = pd.read_parquet(copy / "trials.parquet")
    assert len(trials) == TINY["num_samples"] + 4
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{copy / 'study.db'}")
    assert len(study.trials) == len(trials)
    assert all(t.state.is_finished() for t in study.trials)


def test_reproduce_with_one_seed_says_there_is_no_standard_error():
    from vitsearch.reproduce import difference_line

    runs = pd.DataFrame({"config": ["recommended defaults", "search best"], "final_val_acc": [0.2, 0.9]})
    line = difference_line(runs)
    assert line.startswith("search best - recommended defaults: +0.7000 (one seed of each") and "nan" not in line
    two = pd.concat([runs, runs.assign(final_val_acc=[0.3, 0.8])])
    assert difference_line(two) == "search best - recommended defaults: +0.6000 (standard error 0.0707)"


def test_reproduce_compares_best_and_defaults_over_seeds(tiny_search, tmp_path):
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--from", str(copy), "--seeds", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_parquet(copy / "reproduce.parquet")
    assert sorted(runs["config"].unique()) == ["recommended defaults", "search best"]
    assert sorted(runs["seed"]) == [0, 0, 1, 1, 2, 2] and (runs["epochs"] == 4).all()
    best = runs[runs["config"] == "search best"]["final_val_acc"]
    defaults = runs[runs["config"] == "recommended defaults"]["final_val_acc"]
    assert f"search best - recommended defaults: {best.mean() - defaults.mean():+.4f}" in proc.stdout
    assert "Reproduced over seeds" in (copy / "report.html").read_text()
    # Before training it says what it trains (the defaults alone train 100 epochs: minutes without a line)
    assert proc.stdout.startswith("reproduce recommended defaults (vit_micro, 4 epochs, batch 512) and search best "
                                  "(vit_micro, 4 epochs, batch "), proc.stdout[:500]
    assert ", 3 seed(s) each, one run at a time, on digits: 600 train / 359 val images; 24 epochs in all" \
        in proc.stdout.split("\n")[0]
    # TrainConfig's 5-epoch warmup fills the defaults' 4 epochs: the search's plan said so, the reproduce did not
    assert proc.stdout.split("\n")[1] == ("note: warmup_epochs 5 is not shorter than the runs of recommended "
                                          "defaults (4 epochs): their lr rises until the last step and never "
                                          "decays; set warmup_epochs below 4"), proc.stdout[:800]
    assert "runs of search best" not in proc.stdout  # (its warmup, searched in [0, 1], is shorter)
    # Before the first run ends it says how long all of them take (here a few seconds: once, at the first epoch).
    first_run = proc.stdout.split("final val_acc")[0]
    assert re.search(r"recommended defaults\s+seed 0\s+epoch 1/4\s+val_acc [.\d]+\s+~\d+ s left in all", first_run)
    assert (runs["data"] == "digits").all() and "Trained on digits." in (copy / "report.html").read_text()
    # each row names the search trial its config comes from
    trials = pd.read_parquet(copy / "trials.parquet")
    best = best_of(trials)["optuna_number"]
    assert runs.groupby("config")["trial"].unique().map(list).to_dict() == {"recommended defaults": [0],
                                                                            "search best": [best]}
    from vitsearch.figures import _reproduced

    assert "is trial #" not in _reproduced(runs, "val_acc", "digits", int(best))
    for name, values in runs.groupby("config")["final_val_acc"]:  # to 4 decimals, as in the terminal
        assert f"<td>{name}</td><td>{values.mean():.4f}</td><td>{values.std():.4f}</td>" in \
            _reproduced(runs, "val_acc", "digits", int(best))
    assert f"The search best reproduced here is trial #{best}; the search's best is now #{best + 7}</b> (trials " \
        "were added since)" in _reproduced(runs, "val_acc", "digits", int(best) + 7)

    # Another reproduce of it on other data (here digits in Fashion-MNIST's files) replaced the first one's
    # reproduce.parquet, and report.html showed its figures as if on the search's data
    from conftest import digit_images, write_idx

    images, labels = digit_images(800, 8)
    (tmp_path / "fm").mkdir()
    write_idx(tmp_path / "fm" / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", labels)
    other = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--from", str(copy), "--seeds", "1",
                            "--data", f"fashion_mnist:{tmp_path / 'fm'}"], capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stderr[-3000:]
    assert f"on fashion_mnist:{tmp_path / 'fm'} (not the search's data, digits): 600 train / 160 val images" \
        in other.stdout.split("\n")[0]
    kept = list(copy.glob("reproduce-*.parquet"))
    assert len(kept) == 1 and f"the earlier reproduce is kept as {kept[0].name}" in " ".join(other.stdout.split())
    pd.testing.assert_frame_equal(pd.read_parquet(kept[0]), runs)
    again = pd.read_parquet(copy / "reproduce.parquet")
    assert len(again) == 2 and (again["data"] == f"fashion_mnist:{tmp_path / 'fm'}").all()
    # one seed has no spread: the table said std 0.0000, as if the run repeated exactly
    for name in ("recommended defaults", "search best"):
        row = next(line for line in other.stdout.splitlines() if name in line and "│" in line)
        assert row.split("│")[3].strip() == "-", other.stdout
    text = html.unescape(" ".join(re.sub("<[^>]+>", " ", (copy / "report.html").read_text()).split()))
    assert re.search(r"recommended defaults [\d.]+ - 1 ", text) and re.search(r"search best [\d.]+ - 1 ", text), text
    assert f"Trained on fashion_mnist:{tmp_path / 'fm'}, not on the search's data (digits)" in text
    assert "the search's figures above are not comparable with these." in text


def _reproduce_until(args: list[str], line: str) -> tuple[int, str, str]:
    """`reproduce ARGS`, stopped by SIGTERM (a batch system's time limit) once its output has a line
    holding `line`; the exit code, stdout and stderr."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "reproduce", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = []
    while not out or line not in out[-1]:
        out.append(proc.stdout.readline())
        assert out[-1] or proc.poll() is None, "".join(out) + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(out) + rest, err


def test_an_interrupted_reproduce_resumes_and_a_diverged_run_is_a_row(tiny_search, tmp_path):
    """`reproduce` lost every finished run to Ctrl-C or a time limit (hours of them with the defaults' 100
    epochs), and a run whose loss went non-finite ended it with a traceback. Now the finished runs and the
    run in progress (its checkpoint) are kept, `--resume` trains only what is left, and a diverged run is a
    row with its reason while the others go on."""
    import shutil

    exp, _ = tiny_search
    copy = tmp_path / "exp copy"  # the printed commands quote a path with a space (they printed it bare)
    shutil.copytree(exp, copy)
    best = yaml.safe_load((copy / "best_config.yaml").read_text())
    (copy / "best_config.yaml").write_text(yaml.safe_dump({**best, "lr": 1.0e6}))  # diverges at once
    resume = f"continue with: python main.py reproduce --resume '{copy}'"

    # stopped in the first run, after its first epoch: the epoch is kept in the run's checkpoint
    code, out, err = _reproduce_until(["--from", str(copy), "--seeds", "2"], "seed 0  epoch 1/4")
    assert code == 143 and re.fullmatch(rf"interrupted after 0 runs of 4 and [123] epochs? of the next \(in its "
                                        rf"checkpoint\); {re.escape(resume)}", err.strip()), out + err
    assert not (copy / "reproduce.parquet").exists()
    assert list((copy / "reproduce-runs").iterdir()) == [copy / "reproduce-runs" / "recommended-defaults-seed0"]
    # a new reproduce of the experiment would start over: refused
    again = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--from", str(copy)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "holds a reproduce that has not finished" in again.stderr \
        and f"--resume '{copy}'" in again.stderr and len(again.stderr.strip().splitlines()) == 1, again.stderr

    # while a resume runs (here: the lock it holds), a second one is refused
    import fcntl

    with open(copy / ".reproduce.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        busy = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--resume", str(copy)],
                              capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and busy.stderr.strip() == f"error: a reproduce in {str(copy)!r} is still running " \
        "(pid 4242); wait for it to end, or stop it, then --resume", busy.stderr
    # the resume goes on from epoch 2 of that run; stopped again once the run has finished
    code, out, err = _reproduce_until(["--resume", str(copy)], "seed 0  final val_acc")
    assert code == 143 and err.strip().startswith("interrupted after 1 run of 4") and resume in err, out + err
    assert "continuing: 0 runs of 4 finished before" in out.splitlines()[0]
    assert re.search(r"recommended defaults\s+seed 0\s+epoch 2/4", out) and "epoch 1/4" not in out, out
    kept = json.loads((copy / "reproduce.partial.json").read_text())["runs"]
    assert [(r["config"], r["seed"], r["epochs"]) for r in kept] == [("recommended defaults", 0, 4)]

    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--resume", str(copy)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = pd.read_parquet(copy / "reproduce.parquet")
    assert list(runs[["config", "seed", "status"]].itertuples(index=False, name=None)) == [
        ("recommended defaults", 0, "finished"), ("recommended defaults", 1, "finished"),
        ("search best", 0, "diverged"), ("search best", 1, "diverged")]
    assert runs.iloc[0]["wall_s"] == kept[0]["wall_s"]  # kept, not trained again
    lost = runs[runs["status"] == "diverged"]
    assert lost["reason"].str.startswith("non-finite loss in epoch 1").all() and lost["final_val_acc"].isna().all()
    assert runs[runs["status"] == "finished"]["final_val_acc"].between(0, 1).all()
    assert "search best - recommended defaults: no difference: 2 of 2 runs of search best diverged" in proc.stdout
    assert "diverged" in (copy / "report.html").read_text()
    assert not (copy / "reproduce.partial.json").exists() and not (copy / "reproduce-runs").exists()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--resume", str(copy)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "has finished (reproduce.parquet): nothing to resume" in done.stderr


def test_a_reproduce_of_a_search_whose_best_is_the_defaults_trains_them_once(tmp_path):
    """When the recommended defaults' trial is the search's best, `reproduce --from` trained the same config
    twice per seed (the same runs, for hours with ViT-S) and reported a difference of +0.0000 with a
    standard error. Now it trains it once and says so, in the terminal and in report.html."""
    from vitsearch.figures import _reproduced

    # the defaults' trial alone; warmup_epochs not searched: TrainConfig's 5 fills the 4-epoch budget
    searched = {k: v for k, v in TINY["search"].items() if k != "warmup_epochs"}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**TINY, "num_samples": 1, "search": searched}))
    proc = search("--space", str(tmp_path / "one.yaml"), "--out", str(tmp_path), "--name", "one")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # a search of one trial draws nothing from its space, and says so (it did not)
    said = " ".join(proc.stdout.split())
    assert "note: num_samples 1 runs only the recommended defaults (every search's first trial): nothing is drawn " \
           f"from search: ({', '.join(sorted(searched))}); --extend adds drawn trials" in said
    # a warmup as long as the budget: every trial's lr only rose (nothing said so)
    assert "note: warmup_epochs 5 is not shorter than the budget, scheduler.max_epochs (4 epochs): every trial's lr " \
           "rises until the last step and never decays; set warmup_epochs below 4" in said, said
    exp = tmp_path / "one"
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--from", str(exp), "--seeds", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    assert "2 seed(s) each" in out and "8 epochs in all" in out
    assert "the search's best is the recommended defaults' trial: they are trained once" in out
    assert "search best - recommended defaults: none: the search's best is the recommended defaults' trial " \
           "(trained once)" in out and "standard error" not in out
    runs = pd.read_parquet(exp / "reproduce.parquet")
    assert list(runs[["config", "trial", "seed"]].itertuples(index=False, name=None)) == [
        ("recommended defaults", 0, 0), ("recommended defaults", 0, 1)]
    assert "best is the recommended defaults&#x27; trial (trained once)." in (exp / "report.html").read_text()
    assert "it is now #5</b> (trials were added since)" in _reproduced(runs, "val_acc", "digits", 5)


def test_a_reproduce_resumed_on_changed_data_is_refused(tiny_search, tmp_path):
    """`reproduce --resume` trained the runs left on the data as it is now, beside runs finished on the data
    as it was (found with an image folder changed in between), and reported them as one comparison.
    A search's and a train run's resume already refused that."""
    import shutil

    from conftest import digit_images, write_idx

    exp, _ = tiny_search
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    folder = tmp_path / "fm"
    folder.mkdir()
    images, labels = digit_images(800, 28)
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    code, out, err = _reproduce_until(["--from", str(copy), "--data", f"fashion_mnist:{folder}", "--seeds", "2"],
                                      "seed 0  final val_acc")
    assert code == 143 and "interrupted after 1 run of 4" in err, out + err
    before = (copy / "reproduce.partial.json").read_bytes()
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[::-1])  # relabelled since
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--resume", str(copy)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert re.match(rf"error: the data of the reproduce in {re.escape(repr(str(copy)))} changed since it started: "
                    rf"'fashion_mnist:{re.escape(str(folder))}' held 600 train / 160 val images, hash \w+ then and "
                    r"holds 600 train / 160 val images, hash \w+ now", proc.stderr), proc.stderr
    assert (copy / "reproduce.partial.json").read_bytes() == before and not (copy / "reproduce.parquet").exists()
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)  # restored: it goes on
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--resume", str(copy)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(pd.read_parquet(copy / "reproduce.parquet")) == 4


def test_interop_pyarrow_sql_optuna_and_plain_timm(tiny_search):
    import duckdb
    import pyarrow.parquet as pq
    import timm
    import torch

    from vitsearch.augment import normalize
    from vitsearch.data import load_data

    exp, _ = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    assert pq.read_table(exp / "trials.parquet").num_rows == len(trials)
    assert pq.read_table(exp / "epochs.parquet").schema.field("val_acc").type == "double"
    sql = duckdb.sql(f"SELECT status, count(*) AS n FROM '{exp / 'trials.parquet'}' GROUP BY status").df()
    assert dict(zip(sql["status"], sql["n"])) == trials["status"].value_counts().to_dict()
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
    assert len(study.trials) == len(trials)
    # the best trial's checkpoint loads into a plain timm model and gives the reported accuracy
    best = best_of(trials)
    cfg = load_config(exp / "best_config.yaml")
    model = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, num_classes=10,
                              embed_dim=64, depth=4, num_heads=4,
                              checkpoint_path=str(exp / "checkpoints" / best["trial_id"] / "checkpoint.pt"))
    data = load_data(cfg)
    with torch.no_grad():
        accuracy = (model.eval()(normalize(data.val_x)).argmax(1) == data.val_y).float().mean().item()
    assert abs(accuracy - best["final_val_acc"]) <= 1 / len(data.val_y)


def test_rays_logs_are_hidden_unless_verbose(tiny_search, tmp_path):
    ray_log = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING|ERROR) ", re.M)
    _, quiet = tiny_search
    assert not ray_log.search(quiet.stdout + quiet.stderr)
    small = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    proc = search("--space", str(tmp_path / "small.yaml"), "--out", str(tmp_path), "--name", "loud", "--verbose")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stdout + proc.stderr and ray_log.search(proc.stdout + proc.stderr)
    # Tune's result files are off (every result is in epochs.jsonl): no warning that their metrics are missing
    assert "Failed to fetch metrics" not in proc.stdout + proc.stderr


def test_in_a_log_each_finished_trial_is_a_progress_line(tiny_search):
    """Piped output (nohup, CI, a cluster job) gets plain lines, not the terminal's live table: one per
    finished trial with its status as in trials.parquet, its last epoch and the search's progress."""
    exp, proc = tiny_search
    trials = pd.read_parquet(exp / "trials.parquet")
    # named as in the summary table and report.html, by Optuna number: they were named by Ray's trial id
    trials.index = [f"#{n}" + (" defaults" if d else "")
                    for n, d in zip(trials["optuna_number"], trials["is_defaults"])]
    # Trials that failed or diverged say why (trials.parquet's reason) instead of their worst-by-rule metric.
    pattern = re.compile(r"trial (#\d+(?: defaults)?) (completed|stopped_early|diverged|failed) at epoch (\d+)"
                         r"(?: \(val_acc [-.\d]+\)|: (.+)); (\d+)/8 trials finished, \d+ trial-epochs, \d+s elapsed")
    ended = [m.groups() for m in map(pattern.match, proc.stdout.splitlines()) if m]
    assert sorted(trial_id for trial_id, *_ in ended) == sorted(trials.index)
    assert [int(finished) for *_, finished in ended] == list(range(1, 9))
    for trial_id, status, epoch, reason, _ in ended:
        assert status == trials.loc[trial_id, "status"]
        assert int(epoch) == trials.loc[trial_id, "epochs_run"]  # (a diverged trial's was one more)
        if status in ("completed", "stopped_early"):
            assert reason is None
        else:
            assert reason == trials.loc[trial_id, "reason"] and reason
    assert "diverged" in {status for _, status, *_ in ended}
    done = re.search(r"8/8 trials finished, (\d+) trial-epochs, \d+s elapsed, done", proc.stdout)
    assert done and int(done.group(1)) == len(pd.read_parquet(exp / "epochs.parquet"))  # as the summary says
    assert not any(line.split() == ["trial", "status", "epoch", "val_acc"] for line in proc.stdout.splitlines())


def test_a_config_the_data_cannot_take_fails_once_and_says_why(tmp_path):
    """The recommended defaults' batch of 512 on 300 training images: that trial is `failed` with the
    reason, runs once (no retry helps), is FAIL in the study, and the search goes on and says why."""
    space = {**TINY, "num_samples": 3, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**TINY["fixed"], "data_subset": 300},
             "search": {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [32, 64]}}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "small.yaml"), "--out", str(tmp_path), "--name", "small")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "small"
    trials = pd.read_parquet(exp / "trials.parquet")
    reason = "invalid value for 'batch_size': 512 (must be <= the 300 training images of 'digits')"
    assert ("the recommended defaults' batch_size 512 is more than the 300 training images of 'digits': that "
            "trial will fail") in " ".join(proc.stdout.split())  # said in the plan, before the trials
    defaults = trials[trials["is_defaults"]].iloc[0]
    assert (defaults["status"], defaults["reason"], defaults["epochs_run"]) == ("failed", reason, 0)
    assert list(trials.loc[~trials["is_defaults"], "status"]) == ["completed", "completed"]
    runs = [json.loads(line) for line in (exp / "epochs.jsonl").read_text().splitlines()]
    assert [r["failed"] for r in runs if r["trial_id"] == defaults["trial_id"]] == [1]
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{exp / 'study.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    out = " ".join(proc.stdout.split())
    assert f"trial #{defaults['optuna_number']} defaults failed at epoch 0: {reason}; " in out
    assert f"recommended defaults (#0) failed: {reason}" in out


def test_a_search_whose_every_trial_fails_still_writes_its_reports(tmp_path):
    """Nothing scored (a fixed lr of 1e6: every trial diverges, the recommended defaults' too): the reports and
    the summary are still written, and say why, instead of a traceback from the figures. The exit code is 1
    (it was 0: `search ... && train --config .../best_config.yaml` in a script went on to a missing file).
    The throughput probe of such a config raised out of the search with a traceback; it measures on."""
    space = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**TINY["fixed"], "batch_size": 64, "lr": 1e6, "data_subset": 5000},
             "search": {"weight_decay": {"loguniform": [0.01, 0.1]}}}
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "none.yaml"), "--out", str(tmp_path), "--name", "none")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == ("error: every trial diverged (2 trials): the search found "
                                                    "nothing; each one's reason is in trials.parquet and report.html")
    exp = tmp_path / "none"
    trials = pd.read_parquet(exp / "trials.parquet")
    assert list(trials["status"]) == ["diverged", "diverged"]
    assert all(r.startswith("non-finite loss in epoch 1") for r in trials["reason"])
    assert not (exp / "best_config.yaml").exists()
    page = (exp / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # no attention maps: no trial reached the full budget
    assert "<td>diverged</td><td>non-finite loss in epoch 1" in page
    assert "<td>#0, #1</td>" in page
    out = " ".join(proc.stdout.split())
    assert "2 diverged; recommended defaults (#0) diverged: non-finite loss" in out
    # (and a data_subset larger than the data is said, as `train` says it)
    assert "note: data_subset 5000 is more than the 1438 training images of 'digits': all of them are used" in out


def test_a_space_whose_every_trial_would_run_a_batch_larger_than_the_data_is_refused(tmp_path):
    """The space neither fixes nor searches batch_size, and TrainConfig's 512 is more than the 300 training
    images: every trial would fail. The plan said so in a note, then ran them all (and wrote an experiment
    of failures, exit code 1); a fixed batch that large was already refused."""
    space = {**TINY, "num_samples": 2, "fixed": {**TINY["fixed"], "data_subset": 300},
             "search": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "big.yaml"), "--out", str(tmp_path), "--name", "big")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        f"error: {tmp_path / 'big.yaml'}: batch_size is TrainConfig's 512 in every trial (the space neither fixes "
        "nor searches it), more than the 300 training images of 'digits'; fix it (fixed: batch_size: N) or search it")
    assert not (tmp_path / "big").exists()


def test_architecture_knobs_can_be_searched_and_reproduced_by_the_searchs_metric(tmp_path):
    """`depth` (whose recommended default, None, is the model family's own), `stem` and `attention` (choices of
    names) searched: the defaults trial runs with depth None (a traceback before), the Parquet columns keep
    their types, and the report draws the named choices (parallel.png raised converting 'patch' to float).
    The search ranks by val_loss, so `reproduce --from` compares by val_loss too (it compared val_acc)."""
    space = {**TINY, "num_samples": 3, "metric": "val_loss", "mode": "min",
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**TINY["fixed"], "batch_size": 32},
             "search": {"depth": {"int": [1, 3]}, "stem": {"choice": ["patch", "conv"]},
                        "attention": {"choice": ["full", "linformer"]}, "lr": {"loguniform": [1e-3, 3e-3]}}}
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    proc = search("--space", str(tmp_path / "arch.yaml"), "--out", str(tmp_path), "--name", "arch")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "<NA>" not in proc.stdout  # the summary shows the defaults' unset depth as "-", as other unset values
    assert re.search(r"; difference [-+]\d\.\d{4} \(lower is better\)\n", proc.stdout)  # which sign is better
    exp = tmp_path / "arch"
    trials = pd.read_parquet(exp / "trials.parquet")
    assert list(trials["status"]) == ["completed"] * 3
    defaults = trials[trials["is_defaults"]].iloc[0]
    assert pd.isna(defaults["depth"]) and (defaults["stem"], defaults["attention"]) == ("patch", "full")
    assert trials["depth"].dropna().between(1, 3).all() and str(trials["depth"].dtype) == "Int64"
    study = optuna.load_study(study_name="arch", storage=f"sqlite:///{exp / 'study.db'}")
    assert study.trials[0].user_attrs["outside_space.depth"] is None and "depth" not in study.trials[0].params
    assert (exp / "report.html").read_text().count("data:image/png;base64,") >= 5
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "reproduce", "--from", str(exp), "--seeds", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_parquet(exp / "reproduce.parquet")
    loss = runs.set_index("config")["final_val_loss"]
    out = " ".join(proc.stdout.split())
    assert "final val_loss over 1 seed(s)" in out
    assert (f"search best - recommended defaults in final val_loss (lower is better): "
            f"{loss['search best'] - loss['recommended defaults']:+.4f}") in out
    assert "mean final val_loss" in (exp / "report.html").read_text()


def test_batch_sizes_larger_than_the_data_are_not_sampled(tmp_path):
    """A space's batch sizes that the data cannot fill (vit_tiny's 512 and 1024 on a folder of a few hundred
    images) are left out of the study, with a line in the plan; each such trial used to fail at once."""
    space = {**TINY, "num_samples": 3, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "search": {"lr": {"loguniform": [1e-3, 3e-3]}, "batch_size": {"choice": [16, 32, 1000]}},
             "resources": {"cpu": 0.5, "gpu": 0}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "big.yaml"), "--out", str(tmp_path), "--name", "big")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training images/s per trial (1 CPU thread," in proc.stdout  # half a CPU trains on 1, not "0"
    # 3 one-thread trials at once on fewer CPUs: each runs slower than the probe measured it alone, and the
    # estimate assumed the probed speed
    cpus = len(os.sched_getaffinity(0))
    crowded = re.search(r"; 3 trials of 1 thread share (\d+) CPUs, so each runs at ~1/([\d.]+) of the probed "
                        r"speed", " ".join(proc.stdout.split()))
    if cpus < 3:
        assert crowded and int(crowded.group(1)) == cpus and float(crowded.group(2)) == pytest.approx(3 / cpus,
                                                                                                      rel=1e-2)
    else:
        assert crowded is None, proc.stdout[:1500]
    assert ("batch_size 1000 left out of the search: more than the 600 training images of 'digits'\n"
            in proc.stdout), proc.stdout[:1500]
    trials = pd.read_parquet(tmp_path / "big" / "trials.parquet")
    assert list(trials["status"]) == ["completed"] * 3 and set(trials["batch_size"][1:]) <= {16, 32}
    study = optuna.load_study(study_name="big", storage=f"sqlite:///{tmp_path / 'big' / 'study.db'}")
    assert all(t.distributions["batch_size"].choices == (16, 32) for t in study.trials[1:])


def test_an_experiment_whose_space_yaml_was_edited_is_refused(tiny_search, tmp_path):
    """An edited space.yaml (num_samples 12 -> 14) made a stopped search's --resume run 12 trials, say
    "interrupted: 12 of 14 trials finished" and write no reports. --resume, --extend, report and
    reproduce --from now refuse it (data that moved may be given its new path: the relative-paths test)."""
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(tiny_search[0], exp)
    original = (exp / "space.yaml").read_text()
    edited = yaml.safe_load(original)
    edited["num_samples"] += 2
    (exp / "space.yaml").write_text(yaml.safe_dump(edited))
    before = {p.name: p.stat().st_mtime_ns for p in exp.iterdir()}
    for argv in (["search", "--resume", str(exp)], ["search", "--extend", str(exp), "--trials", "2"],
                 ["report", str(exp)], ["reproduce", "--from", str(exp)]):
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (argv, proc.stderr)
        assert (f"'{exp}': its space.yaml was edited since the search started (num_samples is "
                f"{edited['num_samples']} now and was {edited['num_samples'] - 2}), but its trials were drawn from "
                "the space as it was; restore the file") in proc.stderr, proc.stderr
        assert {p.name: p.stat().st_mtime_ns for p in exp.iterdir()} == before
    edited = yaml.safe_load(original)
    edited["search"]["lr"] = {"loguniform": [1.0e-5, 1.0e-4]}
    (exp / "space.yaml").write_text(yaml.safe_dump(edited))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(exp)], capture_output=True, text=True,
                          timeout=120)
    assert "(search.lr.loguniform is [1e-05, 0.0001] now and was [" in proc.stderr, proc.stderr
    (exp / "space.yaml").write_text(original)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(exp)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_search_folder_given_as_init_from_or_teacher_names_its_best_trials_weights(tiny_search, tmp_path):
    """It said only "no such file or run folder"; the path it names now trains."""
    exp = tiny_search[0]
    weights = exp / "checkpoints" / best_of(pd.read_parquet(exp / "trials.parquet"))["trial_id"] / "checkpoint.pt"
    base = [sys.executable, str(ROOT / "main.py"), "train", "--config", str(exp / "best_config.yaml"), "--out",
            str(tmp_path), "--set", "epochs=1"]
    for key in ("init_from", "teacher"):
        proc = subprocess.run([*base, f"{key}={exp}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr == (
            f"error: invalid value for '{key}': '{exp}' (a search's experiment folder, not a `train` run: its best "
            f"trial's weights are {weights})\n"), proc.stderr
    assert not list(tmp_path.iterdir())
    proc = subprocess.run([*base, f"init_from={weights}", "freeze_blocks=2"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_the_plan_probes_the_largest_and_the_smallest_batch(tiny_search):
    exp, proc = tiny_search
    assert re.search(r"probe: [\d,]+ at batch 64 and [\d,]+ at batch 32 training images/s per trial "
                     r"\(1 CPU thread, device auto\); ~\d+ trial-epochs expected with ASHA, \d at a time -> "
                     r"estimated \d+ s", proc.stdout), proc.stdout[:1000]


def test_the_plan_probes_the_largest_and_the_smallest_model_where_their_shape_is_searched(tmp_path):
    """The probe timed TrainConfig's model shape alone: `depth: {int: [1, 200]}` on vit_micro estimated 2 s
    for a search that took 72 s. Now it times the most and the least expensive shapes the trials can draw
    (the widest, deepest, finest-patched; an end that builds no model keeps TrainConfig's value). A width and a
    head count that build no model together are said in a note."""
    space = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**{k: v for k, v in TINY["fixed"].items() if k != "patch_size"}, "data_subset": 200,
                       "warmup_epochs": 0.0, "batch_size": 64},
             "search": {"depth": {"choice": [1, 3]}, "embed_dim": {"choice": [32, 48]},
                        "num_heads": {"choice": [2, 3]}, "patch_size": {"choice": [4, 2]}}}
    (tmp_path / "shape.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "shape.yaml"), "--out", str(tmp_path), "--name", "shape")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # (the order of the choices does not matter; 3 heads, the most that divide 48, build the widest)
    assert re.search(r"probe: [\d,]+ at batch 64 \(depth 3, embed_dim 48, patch_size 2\) and [\d,]+ at batch 64 "
                     r"\(depth 1, embed_dim 32, patch_size 4\) training images/s per trial", proc.stdout), \
        proc.stdout[:1500]
    # 32 wide with 3 heads builds no model, though each builds with the other's other value: the space is kept,
    # and a trial that draws both fails; the plan said nothing of it
    assert "note: 1 of the 4 combinations of embed_dim and num_heads the trials can draw builds no model (num_heads " \
           "must divide embed_dim; embed_dim 32 with num_heads 3, say): a trial that draws one fails as it starts" \
           in " ".join(proc.stdout.split()), proc.stdout[:1500]


def test_the_plan_probes_the_conv_stem_where_the_stem_is_searched(tmp_path):
    """`stem: {choice: [patch, conv]}` was probed with TrainConfig's patchify stem alone, though the conv stem
    trains fewer images per second (vit_micro at 16 px: ~1,950 against ~2,500). Now the conv stem is the costly
    end and the patchify stem the cheap one; where a patch size builds no conv stem (not a power of two), that end
    keeps the patchify stem and its patch size."""
    from vitsearch.search_cli import _model_ends
    from vitsearch.space import parse_space

    space = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
             "fixed": {**TINY["fixed"], "image_size": 16, "patch_size": 4, "data_subset": 200, "warmup_epochs": 0.0,
                       "batch_size": 64},
             "search": {"stem": {"choice": ["patch", "conv"]}, "lr": {"loguniform": [1.0e-4, 1.0e-3]}}}
    (tmp_path / "stem.yaml").write_text(yaml.safe_dump(space))
    proc = search("--space", str(tmp_path / "stem.yaml"), "--out", str(tmp_path), "--name", "stem")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"probe: [\d,]+ at batch 64 \(stem conv\) and [\d,]+ at batch 64 \(stem patch\) training "
                     r"images/s per trial", proc.stdout), proc.stdout[:1500]
    fixed = {k: v for k, v in space["fixed"].items() if k != "patch_size"}
    odd = parse_space({**space, "fixed": {**fixed, "image_size": 12},
                       "search": {**space["search"], "patch_size": {"choice": [3, 4]}}})
    assert _model_ends(odd, 12) == ({"patch_size": 3}, {"patch_size": 4, "stem": "patch"})


def test_the_probe_times_the_largest_of_the_searched_models():
    """`model: {choice: [vit_micro, vit_small]}` was probed with TrainConfig's vit_tiny alone: 11 s estimated for
    a search whose trials took 24 s (the vit_small ones trained at 31-35 images/s, the probe's vit_tiny at 129).
    The probe now times the model of the most parameters first, then the fewest, whatever their order; with a
    searched width, each end takes the heads that fit its own model."""
    from vitsearch.search_cli import _model_ends, _probe_label
    from vitsearch.space import parse_space

    base = {"name": "m", "num_samples": 4, "scheduler": {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
            "fixed": {"image_size": 16, "patch_size": 4}}
    space = parse_space({**base, "search": {"model": {"choice": ["vit_small", "vit_micro", "vit_tiny"]},
                                            "lr": {"loguniform": [1e-4, 1e-2]}}})
    costly, cheap = _model_ends(space, 16)
    assert (costly, cheap) == ({"model": "vit_small"}, {"model": "vit_micro"})
    assert _probe_label(space, {"batch_size": 64, **costly}) == "batch 64 (model vit_small)"
    space = parse_space({**base, "search": {"model": {"choice": ["vit_micro", "vit_small"]},
                                            "embed_dim": {"choice": [192, 384]}}})
    assert _model_ends(space, 16) == ({"model": "vit_small", "embed_dim": 384},
                                      {"model": "vit_micro", "embed_dim": 192})


def test_the_probe_times_its_points_again_while_the_driver_waits_on_ray():
    """The probe shares the driver's GIL with the import of Ray Tune and `ray.init`, and a step that waits on
    them read slow even by its thread's CPU time: searches probed the quickstart's batch 128 at 1,067-1,553
    images/s for trials that then trained at ~1,920 (Fashion-MNIST's plan: 44-50 min for ~28). Here the main
    thread holds the GIL (pure Python) through the first round, as the driver's imports do, then waits, as
    the driver does on Ray's start: the probe times its points again meanwhile, each keeping its fastest
    round (a sanity check against the same config timed alone in the same process, not a time limit)."""
    import time

    import torch

    from vitsearch.data import load_data
    from vitsearch.search_cli import _Probe
    from vitsearch.space import load_space
    from vitsearch.train import measure_throughput

    space = load_space("quickstart")
    data = load_data(space.trial_config({}))
    threads = torch.get_num_threads()
    probe = _Probe(space, data, "cpu")
    while probe.thread.is_alive() and len(probe.value or []) < 2:  # the first round, crowded
        sum(i * i for i in range(8000))
        time.sleep(0.0002)
    time.sleep(2.0)  # as the driver waits on Ray's start
    probed = dict(probe.result())
    assert probe.rounds >= 2, probe.rounds
    torch.set_num_threads(1)
    try:
        alone = measure_throughput(space.trial_config({"batch_size": 128}), data, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert probed["batch 128"] > 0.6 * alone, (probed, alone)


def test_in_a_log_the_progress_comes_at_least_every_minute_while_results_arrive(capsys):
    from vitsearch import search_cli
    from vitsearch.space import load_space

    class Trial:
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    view = search_cli.LiveView(load_space("quickstart"), 100.0, slots=2)
    assert view.log_lines  # pytest's captured stdout is no terminal
    trials = [Trial("a", "RUNNING"), Trial("b", "RUNNING")]
    view.update(trials, trials[0], {"epoch": 1, "val_acc": 0.1})
    assert capsys.readouterr().out == ""  # less than a minute since the start
    view.last_line -= search_cli.LOG_EVERY_S
    view.update(trials, trials[1], {"epoch": 1, "val_acc": 0.2})
    view.update(trials, trials[1], {"epoch": 2, "val_acc": 0.3})
    lines = capsys.readouterr().out.splitlines()  # the first result after a minute, not the next one
    assert len(lines) == 1 and lines[0].startswith("0/16 trials finished, 2 trial-epochs, 0s elapsed"), lines
    # more trial-epochs than the plan expected: no "~0s left" while trials run; each trains on at least to the
    # next ASHA rung (epoch 6: 4 epochs each, 8 s at the 2 s a trial-epoch has taken)
    view.expected_epochs, view.start = 3.0, view.start - 8
    view.last_line -= search_cli.LOG_EVERY_S
    view.update(trials, trials[0], {"epoch": 2, "val_acc": 0.2})
    assert capsys.readouterr().out.strip().endswith("4 trial-epochs, 8s elapsed, ~16 s left")
    view.expected_epochs, view.start = 100.0, view.start - 3600  # an hour in: the time left in hours, not seconds
    view.last_line -= search_cli.LOG_EVERY_S
    view.update(trials, trials[1], {"epoch": 3, "val_acc": 0.3})
    assert re.search(r"5 trial-epochs, 360\ds elapsed, ~19\.\d h left$", capsys.readouterr().out.strip())


def test_the_time_left_follows_the_trials_once_they_run_longer_than_the_plan_expected(capsys):
    """The plan's ASHA simulation expected 100 trial-epochs of 16 trials; the first 4 trials to end ran 20
    epochs each. The time left counts the other 12 at 20 epochs, not the 20 epochs the plan had left."""
    from vitsearch import search_cli
    from vitsearch.space import load_space

    class Trial:
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    view = search_cli.LiveView(load_space("quickstart"), 100.0, slots=2)
    view.start -= 80  # 80 s for 80 trial-epochs: 1 s each
    trials = [Trial(name, "RUNNING") for name in "abcde"]
    for trial in trials[:4]:
        view.update(trials, trial, {"epoch": 20, "val_acc": 0.9})
        view.update(trials, trial, None, status="TERMINATED")
        trial.status = "TERMINATED"
    view.update(trials, trials[4], {"epoch": 5, "val_acc": 0.5})  # 15 more of its own, 11 trials not started
    view.last_line -= search_cli.LOG_EVERY_S
    view.update(trials, trials[4], {"epoch": 5, "val_acc": 0.5})
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"4/16 trials finished, 85 trial-epochs, 8\ds elapsed, ~4 min left", line), line  # was ~14 s
    # before a round of trials has ended, the plan's figure: 1 trial of 20 epochs says little
    early = search_cli.LiveView(load_space("quickstart"), 100.0, slots=2)
    early.start -= 20
    trials = [Trial("f", "RUNNING"), Trial("g", "RUNNING")]
    early.update(trials, trials[0], {"epoch": 20, "val_acc": 0.9})
    early.update(trials, trials[0], None, status="TERMINATED")
    assert re.search(r"1/16 trials finished, 20 trial-epochs, 2\ds elapsed, ~[78]\d s left$",
                     capsys.readouterr().out.strip())
    # at the end: the last trial runs on alone past the others' mean (6 epochs), at epoch 8; ASHA stops it at
    # epoch 18 at the soonest (rungs 2, 6, 18): 10 epochs, each taking both slots' share of the time
    late = search_cli.LiveView(load_space("quickstart"), 100.0, slots=2)
    late.start -= 49  # 98 trial-epochs in 49 s: 0.5 s each, 1 s of a trial's own
    trials = [Trial(f"t{i}", "RUNNING") for i in range(16)]
    for trial in trials[:15]:
        late.update(trials, trial, {"epoch": 6, "val_acc": 0.9})
        late.update(trials, trial, None, status="TERMINATED")
        trial.status = "TERMINATED"
    late.update(trials, trials[15], {"epoch": 7, "val_acc": 0.9})
    late.last_line -= search_cli.LOG_EVERY_S
    late.update(trials, trials[15], {"epoch": 8, "val_acc": 0.9})
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"15/16 trials finished, 98 trial-epochs, 49s elapsed, ~10 s left", line), line  # was ~1 s


def test_the_live_table_shows_the_statuses_of_trials_parquet(capsys, monkeypatch):
    """On a terminal the live table names an ended trial as trials.parquet will (not Tune's TERMINATED), and a
    trial by its Optuna number, as the summary table does (it showed Ray's trial id), where the searcher gave
    it one."""
    from rich.console import Console

    from vitsearch import search, search_cli
    from vitsearch.space import load_space

    monkeypatch.setattr(search, "TRIAL_NUMBERS", {"full": (3, False), "on": (0, True)})

    class Trial:
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    view = search_cli.LiveView(load_space("quickstart"), 100.0, slots=2)
    trials = [Trial(name, "RUNNING") for name in ("full", "cut", "bad", "on")]
    for trial, result in zip(trials, [{"epoch": 20, "val_acc": 0.9}, {"epoch": 2, "val_acc": 0.2},
                                      {"epoch": 0, "val_acc": 0.0, "failed": 1, "reason": "batch too large"}]):
        view.update(trials, trial, result)
        view.update(trials, trial, None, status="TERMINATED")
        trial.status = "TERMINATED"  # Tune flips it after its callbacks
    view.update(trials, trials[3], {"epoch": 3, "val_acc": 0.5})
    console = Console(record=True, width=100)
    console.print(view.render())
    rows = {line.split()[0]: line.split()[1:] for line in console.export_text().splitlines()[2:]}
    assert rows == {"#3": ["completed", "20/20", "0.9000"], "cut": ["stopped_early", "2/20", "0.2000"],
                    "bad": ["failed", "0/20", "-"], "#0": ["defaults", "running", "3/20", "0.5000"]}
    out = capsys.readouterr().out
    assert "trial bad failed at epoch 0: batch too large; 3/16 trials finished" in out
    assert "trial #3 completed at epoch 20 (val_acc 0.9000); 1/16 trials finished" in out


PRESTART_PROBE = r"""
import json, os, sys, time
from ray import tune
from ray.tune.execution.class_cache import _ActorClassCache
from vitsearch.search import _actors_on_prestarted_workers, init_ray

def idle_workers():
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::IDLE"):
                    found.add(int(pid))
        except OSError:
            pass
    return found

init_ray(None, verbose=False)
deadline = time.time() + 60
while len(idle_workers()) < 2 and time.time() < deadline:  # Ray prestarts one worker per CPU
    time.sleep(0.2)
prestarted = idle_workers()
stock_env = _ActorClassCache().get(tune.Trainable).__ray_metadata__.runtime_env

def trial(config):
    time.sleep(1)  # both trials run at once, on two actors
    tune.report({"pid": os.getpid()})

tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                   tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=2, reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0))
with _actors_on_prestarted_workers():
    results = tuner.fit()
print(json.dumps({"prestarted": sorted(prestarted), "trials": sorted({r.metrics["pid"] for r in results}),
                  "stock_env": bool(stock_env)}))
"""


@pytest.mark.parametrize("pl_disable_fork", [None, "0"])
def test_trial_actors_start_on_the_workers_ray_prestarted(tmp_path, pl_disable_fork):
    """Tune declares its trial actors with a runtime env, and Ray gives such an actor a new process instead of
    a worker it prestarted at `ray.init` (~2 s later). On the local instance vitsearch starts, the actors go
    to the prestarted workers, which inherited the same environment; where the driver's environment
    differs from Tune's runtime env (PL_DISABLE_FORK=0 against Tune's 1), Tune's runtime env is kept."""
    env = {k: v for k, v in os.environ.items() if k != "PL_DISABLE_FORK"}
    if pl_disable_fork is not None:
        env["PL_DISABLE_FORK"] = pl_disable_fork
    proc = subprocess.run([sys.executable, "-c", PRESTART_PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["stock_env"]  # why it matters: Tune's own actor class carries a runtime env
    assert len(found["prestarted"]) >= 2 and len(found["trials"]) == 2
    if pl_disable_fork is None:
        assert set(found["trials"]) <= set(found["prestarted"]), found
    else:
        assert not set(found["trials"]) & set(found["prestarted"]), found


def test_a_restored_searcher_proposes_new_configs_after_the_ones_it_reissues(tmp_path):
    """After a killed driver, Tune restores a searcher snapshot that can predate the last trials it
    proposed; those are re-issued as they were, and the next proposals must be new configs (the
    snapshot's sampler used to draw the re-issued trials' configs again: one config trained twice)."""
    from vitsearch.search import CHECKPOINT_OF, _searcher_class

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128])}

    def searcher():
        return _searcher_class()(space=space, metric="val_acc", mode="max", seed=0, startup_trials=10,
                                 study_name="s", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}"),
                                 max_epochs=4, worst=0.0, defaults=None, defaults_inside=set())

    first = searcher()
    proposed = [first.suggest(f"a{i}") for i in range(2)]
    first.save(str(tmp_path / "snapshot.pkl"))  # Tune's experiment snapshot
    lost = [first.suggest(f"a{i}") for i in range(2, 4)]  # created after it; then the driver is killed
    restored = searcher()
    restored.restore(str(tmp_path / "snapshot.pkl"))
    reissued = [restored.suggest(f"b{i}") for i in range(2)]
    assert [{k: v for k, v in p.items() if k != CHECKPOINT_OF} for p in reissued] == lost
    assert [p[CHECKPOINT_OF] for p in reissued] == ["a2", "a3"]
    new = [restored.suggest(f"b{i}") for i in range(2, 5)]
    configs = [tuple(sorted(p.items())) for p in proposed + lost + new]
    assert len(set(configs)) == len(configs), new
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert len(study.trials) == 7


def test_a_trial_restarted_from_a_checkpoint_keeps_only_its_last_attempts_epochs(tmp_path):
    """Trial a ran epochs 1-6, lost those past its epoch-2 checkpoint, and stopped at epoch 3 after the
    restart: its history is epochs 1-3 of the attempt that went on. Trial old, lost with a killed driver
    after epoch 4, was continued by b from its epoch-2 checkpoint."""
    from vitsearch.report import read_epoch_log

    def row(trial, epoch, acc):
        return {"trial_id": trial, "epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_acc": acc, "lr": 1e-3,
                "grad_norm": 1.0, "grad_norm_max": 1.0, "images_per_s": 100.0, "epoch_time_s": 1.0,
                "micro_batch_size": 32, "time_total_s": float(epoch), "node_id": "n"}

    lines = [row("a", e, 0.1 * e) for e in range(1, 7)] + [row("old", e, 0.3) for e in range(1, 5)]
    lines += [row("a", 3, 0.05), row("b", 3, 0.4), row("b", 4, 0.5)]
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"trial_id": "b", "ep')
    epochs = read_epoch_log(tmp_path / "epochs.jsonl", aliases={"old": "b"})
    assert list(zip(epochs["trial_id"], epochs["epoch"], epochs["val_acc"].round(2))) == [
        ("a", 1, 0.1), ("a", 2, 0.2), ("a", 3, 0.05), ("b", 1, 0.3), ("b", 2, 0.3), ("b", 3, 0.4), ("b", 4, 0.5)]


@pytest.mark.parametrize("resources, message", [
    ({"cpu": 64, "gpu": 0}, r"resources: cpu 64 per trial, but this machine's Ray instance has (\d+) CPUs?: no trial "
                            r"could start; set resources\.cpu to at most \1, or run on a cluster \(--address\) whose "
                            r"nodes have more"),
    ({"cpu": 1, "gpu": 8}, r"resources: gpu 8 per trial, but this machine's Ray instance has (no GPU|\d GPUs?): no "
                           r"trial could start; set resources\.gpu to (0|at most \d), or run on a cluster "
                           r"\(--address\) whose nodes have more"),
], ids=["cpu", "gpu"])
def test_resources_no_trial_can_get_are_one_line_not_a_silent_wait(resources, message, tmp_path):
    """`gpu: 1` on a machine without a GPU, or more CPUs per trial than it has: Tune waited for ever for
    such a node, without a word, after the plan."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**TINY, "resources": resources}))
    # (a regression waits for ever: 120 s, where this takes ~10)
    proc = search("--space", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--name", "exp", timeout=120)
    assert proc.returncode == 2 and re.fullmatch("error: " + message, proc.stderr.strip()), \
        proc.stdout[-2000:] + proc.stderr
    assert not (tmp_path / "exp").exists()
