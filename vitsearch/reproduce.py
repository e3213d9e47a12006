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

COLUMNS = {"config": "string", "seed": "int64", "final_val_acc": "float64", "best_val_acc": "float64",
           "final_val_loss": "float64", "final_train_loss": "float64", "epochs": "int64", "wall_s": "float64"}
LOWER_IS_BETTER = ("val_loss", "train_loss")


def run(configs: dict[str, TrainConfig], seeds: int, device: str = "auto", progress=None,
        on_epoch=None) -> pd.DataFrame:
    """Train every config with seeds 0..seeds-1; one row per run. `progress(row)` after each run,
    `on_epoch(config name, seed, epoch metrics, epochs, seconds left in all)` after each epoch, the time
    left at the pace of every epoch so far."""
    rows = []
    total = sum(cfg.epochs for cfg in configs.values()) * seeds
    done, started = 0, time.perf_counter()
    for name, cfg in configs.items():
        for seed in range(seeds):
            seeded = cfg.replace(seed=seed)
            t0 = time.perf_counter()

            def report(metrics: dict, name=name, seed=seed, epochs=cfg.epochs) -> None:
                nonlocal done
                done += 1
                if on_epoch is not None:
                    on_epoch(name, seed, metrics, epochs, (total - done) * (time.perf_counter() - started) / done)

            result = train(seeded, report, data=load_data(seeded), device=device)
            rows.append({"config": name, "seed": seed, "final_val_acc": result["val_acc"],
                         "best_val_acc": result["best_val_acc"], "final_val_loss": result["val_loss"],
                         "final_train_loss": result["train_loss"],
                         "epochs": len(result["history"]), "wall_s": time.perf_counter() - t0})
            if progress is not None:
                progress(rows[-1])
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def summary(runs: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Mean and spread (sample standard deviation) of the final `metric` per config."""
    grouped = runs.groupby("config", sort=False)[f"final_{metric}"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0), "seeds": grouped.size()})


def difference(runs: pd.DataFrame, better: str, baseline: str, metric: str = "val_acc") -> tuple[float, float]:
    """Mean difference of the final `metric` (better - baseline) and its standard error over seeds."""
    a = runs[runs["config"] == better][f"final_{metric}"]
    b = runs[runs["config"] == baseline][f"final_{metric}"]
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) > 1 and len(b) > 1 else math.nan
    return float(a.mean() - b.mean()), se


def difference_line(runs: pd.DataFrame, metric: str = "val_acc") -> str:
    """'search best - recommended defaults: +0.0123 (standard error 0.0045)', for the terminal and report;
    a metric other than val_acc is named, with which direction is better."""
    diff, se = difference(runs, "search best", "recommended defaults", metric)
    named = "" if metric == "val_acc" else f" in final {metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'}" \
        " is better)"
    return (f"search best - recommended defaults{named}: {diff:+.4f} " +
            (f"(standard error {se:.4f})" if not math.isnan(se) else "(one seed of each: no standard error; "
             "--seeds 3 or more gives one)"))


def defaults_for(exp_dir: Path) -> tuple[TrainConfig, TrainConfig, str]:
    """The experiment's recommended-defaults trial config, its best config, and the metric the search ranked
    its trials by (which the reproduction compares)."""
    from .config import load_config, read_yaml
    from .errors import UserError
    from .space import parse_space

    if not (exp_dir / "space.yaml").is_file() or not (exp_dir / "trials.parquet").is_file():
        from .figures import unfinished

        raise UserError(f"--from {unfinished(exp_dir, 'trials.parquet')}")
    if not (exp_dir / "best_config.yaml").is_file():
        raise UserError(f"--from {str(exp_dir)!r}: no trial of that search reached the full budget, so it has no "
                        "best config (best_config.yaml) to reproduce; --extend it with more trials")
    space = parse_space(read_yaml(exp_dir / "space.yaml", "search space"), origin=str(exp_dir / "space.yaml"))
    return space.trial_config(space.defaults_point()), load_config(exp_dir / "best_config.yaml"), space.metric
