"""Search reports: `trials.parquet`, `epochs.parquet`, `best_config.yaml` and the terminal summary.

Imports no Ray. Inputs are the experiment folder's `epochs.jsonl` (every epoch result, appended as it
arrives), one `TrialOutcome` per trial (config, last result, error) and the stored Optuna study.
Schemas are documented in the README ("Reports") and tested.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

from .config import TrainConfig
from .files import write_parquet, write_yaml
from .space import SearchSpace

STATUSES = ("completed", "stopped_early", "diverged", "failed", "unfinished")
EPOCH_COLUMNS = {  # column -> dtype, in order
    "trial_id": "string", "epoch": "int64", "train_loss": "float64", "val_loss": "float64", "val_acc": "float64",
    "lr": "float64", "grad_norm": "float64", "grad_norm_max": "float64", "images_per_s": "float64",
    "epoch_time_s": "float64", "micro_batch_size": "int64", "time_total_s": "float64", "node_id": "string",
    # monitors (config `monitors: true`; NaN otherwise)
    "cls_norm": "float64", "attn_entropy_mean": "float64", "attn_entropy_min": "float64", "mlp_sparsity": "float64",
}
TRIAL_COLUMNS = {
    "trial_id": "string", "optuna_number": "Int64", "is_defaults": "bool", "status": "string", "reason": "string",
    "epochs_run": "int64", "final_val_acc": "float64", "best_val_acc": "float64", "final_val_loss": "float64",
    "best_val_loss": "float64", "final_train_loss": "float64", "best_epoch": "Int64", "wall_time_s": "float64",
    "images_per_s": "float64", "node_id": "string",
}


@dataclass
class TrialOutcome:
    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any]
    error: str | None = None


CHECKPOINT_OF = "_checkpoint_of"  # config key of a trial re-issued after a killed driver (see search.py)


def read_epoch_log(path: Path, aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """Every recorded epoch of each trial's last attempt; torn lines skipped. A trial restarted from a
    checkpoint (retry, lost node, resumed search) reports again from the epoch after it: its rows from
    that epoch on replace the earlier ones, and the epochs its lost attempt ran past the checkpoint are
    dropped (they were never part of the run that went on). `aliases` maps the id of a trial lost with a
    killed driver to the trial that continued it."""
    aliases = aliases or {}
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a killed driver's log
    rows = [r for r in rows if not r.get("diverged") and not r.get("failed") and "epoch" in r and r["epoch"] > 0]
    attempts: dict[str, list[dict]] = {}
    for r in rows:  # in the order reported
        r["trial_id"] = aliases.get(r["trial_id"], r["trial_id"])
        kept = attempts.setdefault(r["trial_id"], [])
        while kept and kept[-1]["epoch"] >= r["epoch"]:
            kept.pop()
        kept.append(r)
    df = pd.DataFrame([r for kept in attempts.values() for r in kept], columns=list(EPOCH_COLUMNS))
    df = df.sort_values(["trial_id", "epoch"])
    return df.astype(EPOCH_COLUMNS).reset_index(drop=True)


def error_line(error: BaseException | str) -> str:
    """A failed trial's reason: the last line of its exception, at most 300 characters."""
    lines = str(error).strip().splitlines()
    return lines[-1][:300] if lines else repr(error)[:300]


def trial_status(outcome: TrialOutcome, max_epochs: int) -> tuple[str, str]:
    last = outcome.last_result or {}
    if outcome.error:
        return "failed", outcome.error
    if last.get("failed"):
        return "failed", str(last.get("reason", ""))
    if last.get("diverged"):
        return "diverged", str(last.get("reason", ""))
    epoch = int(last.get("epoch", 0) or 0)
    if epoch >= max_epochs:
        return "completed", ""
    if not last:
        return "unfinished", "no epoch finished"
    return "stopped_early", f"ASHA stopped it after epoch {epoch}"


def trials_frame(space: SearchSpace, outcomes: list[TrialOutcome], epochs: pd.DataFrame,
                 optuna_numbers: dict[str, int]) -> pd.DataFrame:
    defaults = space.defaults_point()
    rows = []
    for o in outcomes:
        status, reason = trial_status(o, space.max_epochs)
        mine = epochs[epochs["trial_id"] == o.trial_id]
        best = mine.loc[mine[space.metric].idxmax() if space.mode == "max" else mine[space.metric].idxmin()] \
            if len(mine) else None
        final = mine.iloc[-1] if len(mine) else None
        sampled = {k: v for k, v in o.config.items() if k != CHECKPOINT_OF}
        cfg = TrainConfig.from_dict({**space.base_config(), **sampled}).to_dict()
        number = optuna_numbers.get(o.trial_id, optuna_numbers.get(o.config.get(CHECKPOINT_OF)))
        rows.append({
            "trial_id": o.trial_id, "optuna_number": number,
            "is_defaults": all(o.config.get(k) == v for k, v in defaults.items()),
            "status": status, "reason": reason, "epochs_run": len(mine),
            "final_val_acc": _get(final, "val_acc"), "best_val_acc": mine["val_acc"].max() if len(mine) else math.nan,
            "final_val_loss": _get(final, "val_loss"),
            "best_val_loss": mine["val_loss"].min() if len(mine) else math.nan,
            "final_train_loss": _get(final, "train_loss"),
            "best_epoch": int(best["epoch"]) if best is not None else None,
            "wall_time_s": float(o.last_result.get("time_total_s", math.nan) or math.nan),
            "images_per_s": mine["images_per_s"].mean() if len(mine) else math.nan,
            "node_id": str(final["node_id"]) if final is not None else "",
            **cfg,
        })
    df = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS) + TrainConfig.field_names())
    return df.astype({**TRIAL_COLUMNS, **config_dtypes()}).sort_values("optuna_number").reset_index(drop=True)


def config_dtypes() -> dict[str, str]:
    kinds = {"int": "int64", "int | None": "Int64", "float": "float64", "float | None": "float64", "str": "string",
             "str | None": "string",
             "bool": "bool"}
    return {f.name: kinds[f.type] for f in fields(TrainConfig)}


def _get(row, key: str) -> float:
    return float(row[key]) if row is not None else math.nan


# a tie in the final metric (accuracies are multiples of 1 / validation images) goes to the better of these
TIE_BREAK = {"val_acc": ("final_val_loss", "min"), "val_loss": ("final_val_acc", "max"),
             "train_loss": ("final_val_loss", "min")}


def ranked(trials: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The trials that reached the full budget, best first: by the final metric, a tie by the final validation
    loss (the validation accuracy where the metric is val_loss), then by the earlier trial. Two trials at 0.9610
    were ranked by the row order of an unstable sort, and the table could list first another than the best."""
    second, mode = TIE_BREAK[space.metric]
    return trials[trials["status"] == "completed"].sort_values(
        [f"final_{space.metric}", second, "optuna_number"], ascending=[space.mode == "min", mode == "min", True],
        kind="stable", na_position="last")


def best_trial(trials: pd.DataFrame, space: SearchSpace) -> pd.Series | None:
    """The best trial among those that reached the full budget, by its final metric (`ranked`)."""
    done = ranked(trials, space)
    return None if done.empty else done.iloc[0]


def tie_note(done: pd.DataFrame, space: SearchSpace) -> str:
    """' (tied with #17: its final val_loss, 0.2340, is lower than 0.2553)' where other trials of `done` (`ranked`'s
    frame) reached the best's final metric, saying what ranked the best first; else ''."""
    column = f"final_{space.metric}"
    rest = done.iloc[1:]
    tied = rest[rest[column] == done.iloc[0][column]]
    if tied.empty:
        return ""
    second, mode = TIE_BREAK[space.metric]
    best, runner = done.iloc[0], tied.iloc[0]
    names = ", ".join(f"#{n}" for n in tied["optuna_number"].head(3)) + (", ..." if len(tied) > 3 else "")
    if best[second] == runner[second]:
        return f" (tied with {names}: the earlier trial)"
    word = "lower" if mode == "min" else "higher"
    return f" (tied with {names}: its final {second[6:]}, {best[second]:.4f}, is {word} than {runner[second]:.4f})"


def write_reports(exp_dir: Path, space: SearchSpace, outcomes: list[TrialOutcome], optuna_numbers: dict[str, int],
                  previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the Parquet files and best_config.yaml; `previous` holds the rows of earlier runs of an
    extended search (kept as they are; the new trials are added)."""
    aliases = {o.config[CHECKPOINT_OF]: o.trial_id for o in outcomes if o.config.get(CHECKPOINT_OF)}
    epochs = read_epoch_log(exp_dir / "epochs.jsonl", aliases)
    trials = trials_frame(space, outcomes, epochs, optuna_numbers)
    if previous is not None:
        kept = previous[~previous["trial_id"].isin(trials["trial_id"])]
        trials = pd.concat([kept, trials], ignore_index=True).astype(trials.dtypes.to_dict())
        trials = trials.sort_values("optuna_number").reset_index(drop=True)
    write_parquet(epochs, exp_dir / "epochs.parquet")
    write_parquet(trials, exp_dir / "trials.parquet")
    best = best_trial(trials, space)
    if best is not None:
        from .cli import command, shell

        cfg = {k: _plain(best[k]) for k in TrainConfig.field_names()}
        header = (f"# Best of search {exp_dir.name}: trial {best['trial_id']} (Optuna #{best['optuna_number']}),\n"
                  f"# final {space.metric} {best[f'final_{space.metric}']:.4f} after {best['epochs_run']} epochs.\n"
                  f"# {command()} train --config {shell(exp_dir / 'best_config.yaml')}\n")
        write_yaml(cfg, exp_dir / "best_config.yaml", header)
    return trials, epochs


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


def summary_table(trials: pd.DataFrame, space: SearchSpace, top: int = 5, width: int | None = None) -> Table:
    """Top trials by final metric (full budget only), plus the recommended-defaults trial. Where the table
    would be wider than `width` (a terminal's columns), its headers take two lines and its columns one space
    apart, so that an 80-column terminal shows every value whole instead of cut short ("stopped_ea…")."""
    column = f"final_{space.metric}"
    shown = ranked(trials, space).head(top)
    defaults = trials[trials["is_defaults"]]
    if len(defaults) and defaults.index[0] not in shown.index:
        shown = pd.concat([shown, defaults.head(1)])
    headers = ["trial", "status", "epochs", column, *space.search]

    def rows(digits: int) -> list[list[str]]:
        return [[f"#{row['optuna_number']}" + (" defaults" if row["is_defaults"] else ""), row["status"],
                 str(row["epochs_run"]), metric_text(row[column]), *(_fmt(row[k], digits) for k in space.search)]
                for _, row in shown.iterrows()]

    title = f"top trials by final {space.metric} (full budget: {space.max_epochs} epochs)"
    cells = rows(4)
    natural = sum(max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)) + 3 * len(headers) + 1
    if width is None or natural <= width:
        table = Table(title=title)
        for name in headers:
            table.add_column(name, justify="right")
    else:  # the knobs to 3 significant digits (best_config.yaml has them whole), "#0 defaults" on two lines
        table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)
        cells = rows(3)
        for i, name in enumerate(headers):
            name = name.replace("_", "_\n", 1)
            widest = max(len(w) for w in [word for r in cells for word in r[i].split()] + name.split("\n"))
            table.add_column(name, justify="right", min_width=widest, max_width=widest if i == 0 else None)
    for row in cells:
        table.add_row(*row)
    return table


def comparison_line(trials: pd.DataFrame, space: SearchSpace) -> str:
    done = ranked(trials, space)
    best = None if done.empty else done.iloc[0]
    defaults = trials[trials["is_defaults"]]
    column = f"final_{space.metric}"
    counts = trials["status"].value_counts().to_dict()
    parts = [", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s))]
    if best is not None:
        parts.append(f"best #{best['optuna_number']}: {space.metric} {best[column]:.4f}{tie_note(done, space)}")
    if len(defaults):
        d = defaults.iloc[0]
        if d["status"] in ("failed", "diverged"):
            parts.append(f"recommended defaults (#{d['optuna_number']}) {d['status']}: {d['reason']}")
        else:
            parts.append(f"recommended defaults (#{d['optuna_number']}, {d['status']}): {space.metric} "
                         f"{metric_text(d[column])}")
        if best is not None and d["status"] == "completed":
            parts.append(f"difference {best[column] - d[column]:+.4f}" + (" (lower is better)" if space.mode == "min"
                                                                          else ""))
    return "; ".join(parts)


def chance_note(reached: float, majority: int, n: int, search: bool = True) -> str | None:
    """A note where nothing learned: `reached`, the highest val_acc any trial (or a `train` run, `search`
    False) reached at any epoch, is within two binomial standard errors of always answering the validation
    set's most common class (`majority` of its `n` images). Such a search's best config is no better than a
    guess, and its table and best_config.yaml said nothing of it (a 3-epoch search on val_loss: best 2.3315,
    the defaults, at val_acc 0.12 of 0.13)."""
    if majority == n or not math.isfinite(reached):  # (a validation set of one class: nothing beats chance)
        return None
    chance = majority / n
    margin = 2 * math.sqrt(chance * (1 - chance) / n)
    if reached > chance + margin:
        return None
    return ("note: " + ("no trial learned anything measurable: the highest val_acc any trial reached" if search else
                        "the run learned nothing measurable: its best val_acc") +
            f", {reached:.4f}, is within chance (always answering the most common class scores {chance:.4f} on the "
            f"{n:,} validation images, and two standard errors are {margin:.4f}), " +
            ("so the best config is no better than a guess; give the trials more epochs (scheduler.max_epochs)"
             if search else "so its weights are no better than a guess; give it more epochs") +
            ", more data, or a shorter warmup or a higher lr")


def val_majority(data) -> list[int]:
    """The validation images of the most common class, and all of them: what always answering that class
    scores (`chance_note`)."""
    return [int(data.val_y.bincount().max()) if len(data.val_y) else 0, len(data.val_y)]


def best_val_acc(trials: pd.DataFrame) -> float:
    """The highest val_acc any trial reached at any epoch (NaN where none reported one)."""
    return float(trials["best_val_acc"].max()) if "best_val_acc" in trials and len(trials) else float("nan")


def metric_text(value: Any, sign: bool = False) -> str:
    """A metric (or, with `sign`, a difference of two) to 4 decimals, as the progress lines and the best trial's:
    0.2400, not 0.24; report.html's tables too."""
    if value is None or value is pd.NA or math.isnan(value):
        return _fmt(value)
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value is pd.NA:  # an unset default (`patch_size` None) in an integer column
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)
