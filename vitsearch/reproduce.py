"""`python main.py reproduce`: the recommended defaults (and a search's best config) over N seeds.

Each seed draws its own train/validation split, initialisation, data order and augmentation, so the
spread covers all of them. Every run trains the full budget with the shared trainer. Imports no Ray.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .data import load_data
from .train import train

COLUMNS = {"config": "string", "trial": "Int64", "seed": "int64", "data": "string", "status": "string",
           "reason": "string", "final_val_acc": "float64", "best_val_acc": "float64", "final_val_loss": "float64",
           "final_train_loss": "float64", "epochs": "int64", "wall_s": "float64"}
LOWER_IS_BETTER = ("val_loss", "train_loss")
SAME_TRIAL = ("search best - recommended defaults: none: the search's best is the recommended defaults' trial "
              "(trained once)")
CHECKPOINT_EVERY_S = 10.0  # a run in progress keeps its epochs at most this often (vit_small's: ~260 MB each)


def run(configs: dict[str, TrainConfig], seeds: int, device: str = "auto", progress=None,
        on_epoch=None, done: list[dict] = (), work_dir: Path | None = None,
        trials: dict[str, int] | None = None) -> pd.DataFrame:
    """Train every config with seeds 0..seeds-1; one row per run. `done`: rows of runs that finished
    before (an interrupted reproduce), kept and not trained again. With `work_dir`, the run in progress
    writes a checkpoint after its first epoch and then at most every CHECKPOINT_EVERY_S in
    `work_dir/<config>-seed<N>/`, continues from one found there,
    and removes it when it ends. A run whose loss goes non-finite is a row with status `diverged`, its
    reason and no final metrics; the other runs go on. `progress(row, rows so far)` after each run,
    `on_epoch(config name, seed, epoch metrics, epochs, seconds left in all)` after each epoch, the time
    left at the pace of every epoch trained so far. `trials`: the Optuna number of the search trial each
    config comes from (reproduce --from), kept in each row."""
    import shutil

    from .errors import NonFiniteLossError
    from .train import CHECKPOINT_NAME, peek_history

    rows = [dict(row) for row in done]
    finished = {(row["config"], int(row["seed"])) for row in rows}
    todo = [(name, cfg, seed) for name, cfg in configs.items() for seed in range(seeds)
            if (name, seed) not in finished]
    folders = {(name, seed): work_dir / f"{name.replace(' ', '-')}-seed{seed}" if work_dir else None
               for name, _, seed in todo}
    resumable = {key: folder for key, folder in folders.items()
                 if folder is not None and (folder / CHECKPOINT_NAME).is_file()}
    total = sum(cfg.epochs for _, cfg, _ in todo) - sum(
        len(peek_history(folder / CHECKPOINT_NAME)) for folder in resumable.values())
    trained, started = 0, time.perf_counter()
    for name, cfg, seed in todo:
        seeded = cfg.replace(seed=seed)
        t0 = time.perf_counter()

        def report(metrics: dict, name=name, seed=seed, epochs_in_all=cfg.epochs) -> None:
            nonlocal trained
            trained += 1
            if on_epoch is not None:
                on_epoch(name, seed, metrics, epochs_in_all,
                         max(total - trained, 0) * (time.perf_counter() - started) / trained)

        folder = folders[(name, seed)]
        row = {"config": name, "trial": (trials or {}).get(name), "seed": seed, "data": cfg.data}
        saved = [-math.inf]

        def checkpoint_due(epoch: int, saved=saved) -> bool:  # the first epoch's, then at most every 10 s
            due = time.monotonic() - saved[0] >= CHECKPOINT_EVERY_S
            saved[0] = time.monotonic() if due else saved[0]
            return due

        try:
            result = train(seeded, report, data=load_data(seeded), device=device, checkpoint_dir=folder,
                           resume_from=folder if (name, seed) in resumable else None, checkpoint_due=checkpoint_due)
            row.update(status="finished", reason="", final_val_acc=result["val_acc"],
                       best_val_acc=result["best_val_acc"], final_val_loss=result["val_loss"],
                       final_train_loss=result["train_loss"], epochs=len(result["history"]))
        except NonFiniteLossError as exc:
            row.update(status="diverged", reason=str(exc), final_val_acc=math.nan, best_val_acc=math.nan,
                       final_val_loss=math.nan, final_train_loss=math.nan, epochs=exc.epoch)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        if progress is not None:
            progress(row, list(rows))  # the caller keeps them before the checkpoint goes
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return frame(rows)


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of runs as reproduce.parquet's typed columns."""
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that trained to the end (reproduce.parquet written before the `status` column has only those)."""
    return runs[runs["status"] == "finished"] if "status" in runs else runs


def summary(runs: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Mean and spread (sample standard deviation) of the final `metric` per config over its finished runs,
    with how many finished (`seeds`) and how many diverged. The spread of one finished run is unknown (NaN),
    not 0: `--seeds 1` showed std 0.0000, as if the run repeated exactly."""
    grouped = finished(runs).groupby("config", sort=False)[f"final_{metric}"]
    names = pd.unique(runs["config"])
    diverged = (runs["status"] == "diverged") if "status" in runs else pd.Series(False, index=runs.index)
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "seeds": grouped.size(),
                         "diverged": diverged.groupby(runs["config"]).sum()}, index=names).fillna(
        {"seeds": 0, "diverged": 0}).astype({"seeds": "int64", "diverged": "int64"})


def difference(runs: pd.DataFrame, better: str, baseline: str, metric: str = "val_acc") -> tuple[float, float]:
    """Mean difference of the final `metric` (better - baseline) and its standard error over seeds."""
    runs = finished(runs)
    a = runs[runs["config"] == better][f"final_{metric}"]
    b = runs[runs["config"] == baseline][f"final_{metric}"]
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) > 1 and len(b) > 1 else math.nan
    return float(a.mean() - b.mean()), se


def difference_line(runs: pd.DataFrame, metric: str = "val_acc") -> str:
    """'search best - recommended defaults: +0.0123 (standard error 0.0045)', for the terminal and report;
    a metric other than val_acc is named, with which direction is better. Diverged runs have no final
    metric: the difference is over the finished runs, and the line says how many diverged."""
    diff, se = difference(runs, "search best", "recommended defaults", metric)
    named = "" if metric == "val_acc" else f" in final {metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'}" \
        " is better)"
    counts = summary(runs, metric)
    lost = [f"{int(row['diverged'])} of {int(row['seeds'] + row['diverged'])} runs of {name} diverged"
            for name, row in counts.iterrows() if row["diverged"]]
    if math.isnan(diff):
        return f"search best - recommended defaults{named}: no difference: " + ", ".join(lost)
    return (f"search best - recommended defaults{named}: {diff:+.4f} " +
            (f"(standard error {se:.4f})" if not math.isnan(se) else "(a config with one finished run: no "
             "standard error)" if lost else "(one seed of each: no standard error; --seeds 3 "
             "or more gives one)") + (f", over the finished runs ({', '.join(lost)})" if lost else ""))


def defaults_for(exp_dir: Path) -> tuple[TrainConfig, TrainConfig, str, dict[str, int]]:
    """The experiment's recommended-defaults trial config, its best config, the metric the search ranked
    its trials by (which the reproduction compares), and the Optuna numbers of the two trials."""
    from .config import load_config
    from .errors import UserError
    from .space import experiment_space

    if not (exp_dir / "space.yaml").is_file() or not (exp_dir / "trials.parquet").is_file():
        from .figures import unfinished

        raise UserError(f"--from {unfinished(exp_dir, 'trials.parquet')}")
    if not (exp_dir / "best_config.yaml").is_file():
        raise UserError(f"--from {str(exp_dir)!r}: no trial of that search reached the full budget, so it has no "
                        "best config (best_config.yaml) to reproduce; --extend it with more trials")
    from .report import best_trial

    space = experiment_space(exp_dir, "--from")
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    best, defaults = best_trial(trials, space), trials[trials["is_defaults"]]
    numbers = {name: int(row["optuna_number"]) for name, row in (
        ("recommended defaults", defaults.iloc[0] if len(defaults) else None), ("search best", best))
        if row is not None and not pd.isna(row["optuna_number"])}
    return space.trial_config(space.defaults_point()), load_config(exp_dir / "best_config.yaml"), space.metric, numbers
