"""`report.html` and its PNG figures, from a finished experiment folder. Imports no Ray.

Reads `trials.parquet`, `epochs.parquet`, `space.yaml` and the stored Optuna study; writes next to them
`learning_curves.png`, `knobs.png`, `importance.png`, `parallel.png`, `best_trial.png`,
`attention_maps.png` (the best trial's, from its checkpoint) and a self-contained `report.html`
(figures embedded as data URIs, no scripts, opens offline).
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
import platform
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig
from .errors import UserError
from .files import write_bytes
from .report import STATUSES, best_trial, best_val_acc, chance_note, metric_text, ranked
from .space import SearchSpace, experiment_space

STATUS_COLORS = {"completed": "#1b7837", "stopped_early": "#9e9e9e", "diverged": "#d73027", "failed": "#000000",
                 "unfinished": "#fdae61"}


def load_experiment(exp_dir: Path) -> tuple[SearchSpace, pd.DataFrame, pd.DataFrame]:
    for name in ("space.yaml", "trials.parquet", "epochs.parquet"):
        if not (exp_dir / name).is_file():
            raise UserError(unfinished(exp_dir, name))
    space = experiment_space(exp_dir, "report")
    return space, pd.read_parquet(exp_dir / "trials.parquet"), pd.read_parquet(exp_dir / "epochs.parquet")


def unfinished(exp_dir: Path, missing: str) -> str:
    """Why `exp_dir` has no `missing` report file yet: a search still running in it, one stopped before
    its reports (`kill -9`, a lost machine), or a folder that is no experiment."""
    from .cli import command, on_cluster, shell
    from .files import folders_in, search_running

    if (exp_dir / "space.yaml").is_file() and (exp_dir / "run.json").is_file():
        pid = search_running(exp_dir)
        if pid is not None:
            return (f"{str(exp_dir)!r} has no {missing} yet: its search is still running (pid {pid}) and writes "
                    "the reports when it ends")
        try:
            address = json.loads((exp_dir / "run.json").read_text()).get("address")
        except (OSError, ValueError, AttributeError):
            address = None
        return (f"{str(exp_dir)!r} has no {missing}: its search stopped before writing its reports; continue it "
                f"with: {command()} search --resume {shell(exp_dir)}{on_cluster(address)}")
    if (exp_dir / "config.yaml").is_file() and (exp_dir / "checkpoint.pt").is_file():  # what `train` writes
        return (f"{str(exp_dir)!r} is a `train` run (config.yaml, checkpoint.pt), not a search's experiment folder; "
                "its epochs are in its epochs.parquet")
    if (exp_dir / "reproduce.parquet").is_file() or (exp_dir / "reproduce.partial.json").is_file():
        return (f"{str(exp_dir)!r} is a reproduce of the recommended defaults, not a search's experiment folder; "
                "its runs are in its reproduce.parquet")
    return f"{str(exp_dir)!r} is not a finished vitsearch experiment (no {missing} in it)" + folders_in(exp_dir)


def write_html_report(exp_dir: Path) -> Path:
    """Render the figures and report.html for `exp_dir`; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    space, trials, epochs = load_experiment(exp_dir)
    importances, completed, none_why = _importances(exp_dir, space.metric)
    pngs = {
        "learning_curves.png": _learning_curves(space, trials, epochs),
        "knobs.png": _knobs(space, trials),
        "importance.png": _importance_chart(space, importances, completed, none_why),
        "parallel.png": _parallel(space, trials),
        "best_trial.png": _best_trial(space, trials, epochs),
    }
    attention, attention_note = _best_attention(exp_dir, space, trials)
    if attention is not None:
        pngs["attention_maps.png"] = attention
    for name, data in pngs.items():
        write_bytes(data, exp_dir / name)
    path = exp_dir / "report.html"
    page = _html(exp_dir, space, trials, epochs, (importances, completed, none_why), pngs, attention_note)
    write_bytes(page.encode(), path)
    return path


def _from_storage(exp_dir: Path, trial_id: str, local: Path) -> tuple[str | None, Path | None]:
    """A trial's checkpoint from the search's `--storage` (run.json), copied to `local`: where it was
    looked for, and `local` if it was there."""
    from .search import TrialCheckpoints, storage_root

    try:
        run = json.loads((exp_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None, None
    root = storage_root(run.get("storage"), run)
    if not root:
        return None, None
    try:
        checkpoints = TrialCheckpoints(root)
        return checkpoints._path(trial_id), local if checkpoints.download(trial_id, local) else None
    except OSError:  # a storage this machine cannot reach (now)
        return root, None


def _best_attention(exp_dir: Path, space: SearchSpace, trials: pd.DataFrame) -> tuple[bytes | None, str]:
    """The best full-budget trial's attention maps, from its checkpoint and its data; else why not."""
    from .data import load_data
    from .model import load_trained

    best = best_trial(trials, space)
    if best is None:
        return None, "no trial reached the full budget"
    checkpoint = exp_dir / "checkpoints" / str(best["trial_id"]) / "checkpoint.pt"
    with tempfile.TemporaryDirectory() as tmp:
        if not checkpoint.is_file():  # with --storage: in the experiment's folder there
            where, fetched = _from_storage(exp_dir, str(best["trial_id"]), Path(tmp) / "checkpoint.pt")
            if fetched is None:
                return None, f"the best trial's checkpoint is not on this machine ({where or checkpoint})"
            checkpoint = fetched
        try:
            cfg, _shape, model = load_trained(checkpoint, "checkpoint")
            png = attention_maps_png(model, load_data(cfg))
        except UserError as exc:
            return None, f"not drawn: {exc}"
    if png is None:
        return None, f"not drawn: the best trial uses attention: {cfg.attention} (no map over patches)"
    return png, f"the best trial (Optuna #{best['optuna_number']}), from its final checkpoint"


# --- figures -------------------------------------------------------------------------------------

DPI = 110


def _png(fig, tight: bool = True) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buffer.getvalue()


def _learning_curves(space: SearchSpace, trials: pd.DataFrame, epochs: pd.DataFrame) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5))
    status = dict(zip(trials["trial_id"], trials["status"]))
    defaults = set(trials.loc[trials["is_defaults"], "trial_id"])
    for trial_id, rows in epochs.groupby("trial_id"):
        s = status.get(trial_id, "unfinished")
        ax.plot(rows["epoch"], rows[space.metric], color=STATUS_COLORS[s], alpha=0.9 if s == "completed" else 0.5,
                lw=2.2 if trial_id in defaults else 1.2, ls="--" if trial_id in defaults else "-")
    for rung in space.rungs:
        ax.axvline(rung, color="#4575b4", lw=0.8, ls=":")
    handles = [plt.Line2D([], [], color=c, label=s.replace("_", " ")) for s, c in STATUS_COLORS.items()
               if s in set(trials["status"])]
    handles += [plt.Line2D([], [], color="#555", ls="--", lw=2.2, label="recommended defaults"),
                plt.Line2D([], [], color="#4575b4", ls=":", label="ASHA rungs")]
    ax.legend(handles=handles, loc="best", fontsize=9)
    ax.set(xlabel="epoch", ylabel=space.metric, title=f"{space.metric} of every trial, by final status")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: whole numbers
    ax.grid(alpha=0.3)
    return _png(fig)


def _knobs(space: SearchSpace, trials: pd.DataFrame) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    knobs = list(space.search)
    cols = min(3, len(knobs))
    rows_n = math.ceil(len(knobs) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    metric = f"final_{space.metric}"
    for ax, knob in zip(axes.flat, knobs):
        x, names = _named_choices(space, knob, trials[knob])
        for status, rows in trials.groupby("status"):
            ax.scatter(x[rows.index], rows[metric], color=STATUS_COLORS.get(status, "#000"), s=36,
                       label=status.replace("_", " "), alpha=0.85,
                       facecolors="none" if status != "completed" else STATUS_COLORS[status])
        defaults = trials[trials["is_defaults"]]
        ax.scatter(x[defaults.index], defaults[metric], marker="*", s=160, color="#4575b4", label="defaults", zorder=3)
        scored = trials.loc[trials[metric].notna(), knob]
        if names:  # a choice of names (teacher: none | results/teach): one column each, in the file's order
            ax.set_xticks(range(len(names)), names, rotation=15 if max(map(len, names)) > 8 else 0, fontsize=8)
            ax.set_xlim(-0.5, len(names) - 0.5)
        elif _doubling_choice(space, knob, trials[knob]):
            # batch sizes 32, 64, 128 (and the defaults' 512): evenly spaced, labelled with their values
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(set(trials[knob].dropna())))
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        elif space.search[knob].kind in ("loguniform", "int-log") and (scored > 0).any():  # no trial scored: linear
            ax.set_xscale("log")
            # Labels at 1, 2 and 5 x 10^k: a range within a decade or two (lr 1e-4..3e-3) otherwise shows a
            # single labelled tick; the other minor ticks stay unlabelled (their labels overlap).
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        elif space.search[knob].kind == "int":  # depth 1-4: no ticks at 1.5, 2.5
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set(xlabel=knob, ylabel=f"{space.metric} at last epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(knobs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{space.metric} against each searched knob (filled: full budget; hollow: stopped early)")
    fig.tight_layout()
    return _png(fig, tight=False)  # laid out already: a second (cropping) layout pass costs ~0.2 s


def _doubling_choice(space: SearchSpace, knob: str, values: pd.Series) -> bool:
    """A choice of positive numbers that span a factor of 4 or more (batch sizes): drawn on a log axis."""
    if space.search[knob].kind != "choice" or not pd.api.types.is_numeric_dtype(values):
        return False
    present = values.dropna()
    return bool(len(present)) and present.min() > 0 and present.max() >= 4 * present.min()


def _best_trial(space: SearchSpace, trials: pd.DataFrame, epochs: pd.DataFrame) -> bytes:
    """The best full-budget trial's monitors per epoch: losses, accuracy, learning rate, gradient norm."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    best = best_trial(trials, space)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    if best is None:
        for ax in axes:
            ax.axis("off")
        axes[1].text(0.5, 0.5, "no trial reached the full budget", ha="center", va="center")
        return _png(fig)
    rows = epochs[epochs["trial_id"] == best["trial_id"]]
    axes[0].plot(rows["epoch"], rows["train_loss"], label="train loss (augmented)")
    axes[0].plot(rows["epoch"], rows["val_loss"], label="val loss")
    axes[0].plot(rows["epoch"], rows["val_acc"], label="val acc")
    axes[0].legend(fontsize=8)
    axes[1].plot(rows["epoch"], rows["grad_norm"], label="mean")
    axes[1].plot(rows["epoch"], rows["grad_norm_max"], label="max")
    if best["grad_clip"] > 0:
        axes[1].axhline(float(best["grad_clip"]), color="#d73027", ls=":", label="clip threshold")
    axes[1].legend(fontsize=8)
    axes[1].set_title("gradient norm before clipping")
    if rows["attn_entropy_mean"].notna().any():  # monitors were on: show them instead of the lr
        axes[2].plot(rows["epoch"], rows["attn_entropy_mean"], label="attention entropy, mean of layers")
        axes[2].plot(rows["epoch"], rows["attn_entropy_min"], label="attention entropy, lowest layer")
        axes[2].plot(rows["epoch"], rows["mlp_sparsity"], label="MLP sparsity (share < 0.01)")
        axes[2].plot(rows["epoch"], rows["cls_norm"] / rows["cls_norm"].max(), label="CLS norm / its max")
        axes[2].legend(fontsize=7)
        axes[2].set_title("monitors (probe batch)")
    else:
        axes[2].plot(rows["epoch"], rows["lr"])
        axes[2].set_title("learning rate (each epoch's last step)")
    axes[0].set_title(f"best trial #{best['optuna_number']}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig, tight=False)


def _named_choices(space: SearchSpace, knob: str, values: pd.Series) -> tuple[pd.Series, list[str]]:
    """A knob's values as x positions: for a choice of names, each name's place (unset, as the defaults'
    teacher is, shows as "none", after the file's choices where it is none of them) and the names; else the
    values themselves and no names. (matplotlib refused the unset value: "float() argument ... 'NAType'".)"""
    dist = space.search[knob]
    if dist.kind != "choice" or pd.api.types.is_numeric_dtype(values):
        return values, []
    labels = ["none" if c is None else str(c) for c in dist.choices]
    shown = values.astype(object).where(values.notna(), "none").map(str)
    labels += [v for v in dict.fromkeys(shown) if v not in labels]
    return shown.map({name: float(i) for i, name in enumerate(labels)}), labels


def _importances(exp_dir: Path, metric: str) -> tuple[dict[str, float], int, str]:
    """Optuna's importance evaluator on the stored study (its COMPLETE trials: full budget, and diverged ones
    at the worst value), how many it had, and why there is no estimate where the importances are empty."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from .search import study_name, study_storage

            study = optuna.load_study(study_name=study_name(exp_dir), storage=study_storage(exp_dir))
            values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
            completed = len(values)
            if completed > 1 and len(set(values)) == 1:  # the evaluator split 1 evenly: 0.50 / 0.50 over 2 knobs
                return {}, completed, (f"every one of the {completed} complete trials has the same {metric}, "
                                       f"{values[0]:.4g}: there is nothing to rank")
            importances = dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, KeyError):  # fewer than two complete trials, a single value, ...
        return {}, 0, NO_ESTIMATE
    # With one completed trial Optuna's evaluator warns and calls every knob equally important: no estimate.
    if any("too small to compute importances" in str(w.message) for w in caught):
        return {}, completed, NO_ESTIMATE
    return importances, completed, ""


NO_ESTIMATE = "not enough completed trials for an importance estimate"


def _importance_basis(importances: dict[str, float], completed: int) -> str:
    """What the importance estimate rests on: a forest fitted to `completed` points ranks K knobs by chance
    where it has no more points than knobs (2 completed trials over 3 knobs: 0.50 / 0.50 / 0)."""
    text = (f"Optuna's default evaluator over the {completed} trials the study holds as complete (full budget, "
            "and diverged ones at the worst value)")
    if completed <= len(importances):
        text += f": fewer than the {len(importances)} knobs plus one, so this ranking is a guess (--extend the search)"
    return text


def _importance_chart(space: SearchSpace, importances: dict[str, float], completed: int, none_why: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if importances:
        names = list(reversed(importances))
        ax.barh(names, [importances[n] for n in names], color="#4575b4")
        guess = completed <= len(importances)
        ax.set(xlabel=f"importance (Optuna's default evaluator, {completed} complete trials"
                      f"{': a guess' if guess else ''})")
    else:
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(none_why, 60)), ha="center", va="center")
        ax.axis("off")
    ax.set_title(f"which knobs mattered for {space.metric}")
    return _png(fig)


def _parallel(space: SearchSpace, trials: pd.DataFrame) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    knobs = list(space.search)
    metric = f"final_{space.metric}"
    fig, ax = plt.subplots(figsize=(9, 4.5))
    scaled, labels = {}, {}
    for knob in knobs:
        dist = space.search[knob]
        places, names = _named_choices(space, knob, trials[knob])
        if names:
            # a choice of names (stem: patch | conv): its choices evenly spaced, in the file's order, labelled
            positions = np.linspace(0, 1, len(names)) if len(names) > 1 else [0.5]
            scaled[knob] = places.map(dict(enumerate(positions))).astype(float)
            labels[knob] = dict(zip(names, positions))
            continue
        values = trials[knob].astype(float)  # an unset default (depth: the family's own) is NaN: no point
        if dist.kind in ("loguniform", "int-log") or _doubling_choice(space, knob, trials[knob]):
            values = np.log10(values.clip(lower=1e-30))
        span = values.max() - values.min()
        scaled[knob] = (values - values.min()) / span if span > 0 else values * 0 + 0.5
    score = trials[metric].astype(float)
    low, high = (score.min(), score.max()) if score.notna().any() else (0.0, 1.0)  # no trial scored: all grey
    cmap = plt.get_cmap("viridis")
    order = score.fillna(low).sort_values().index  # best drawn last, on top
    for i in order:
        s = score[i]
        color = "#bbbbbb" if math.isnan(s) else cmap((s - low) / (high - low) if high > low else 1.0)
        ax.plot(range(len(knobs)), [scaled[k][i] for k in knobs], color=color, alpha=0.8,
                lw=2.5 if trials.loc[i, "is_defaults"] else 1.2)
    for x, knob in enumerate(knobs):
        for choice, y in labels.get(knob, {}).items():
            ax.annotate(str(choice), (x, y), xytext=(4, 0), textcoords="offset points", fontsize=8, va="center")
    ax.set_xticks(range(len(knobs)), knobs)
    ax.set_yticks([0, 1], ["low", "high"])
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
    fig.colorbar(sm, ax=ax, label=f"{space.metric} at last epoch")
    ax.set_title("parallel coordinates of the searched knobs (log scale where searched on one, and for batch sizes)")
    return _png(fig)


# --- HTML ----------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.92em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    """A cell: a float to 4 significant digits, but whole from 1,000 on (a GPU's 12,346 images/s read
    "1.235e+04"); a metric's value is passed as `metric_text`'s, to 4 decimals as in the terminal."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _img(name: str, data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _html(exp_dir: Path, space: SearchSpace, trials: pd.DataFrame, epochs: pd.DataFrame,
          importance: tuple[dict[str, float], int, str], pngs: dict[str, bytes], attention_note: str = "") -> str:
    importances, completed, none_why = importance
    metric = f"final_{space.metric}"
    best = best_trial(trials, space)
    defaults = trials[trials["is_defaults"]]
    counts = trials["status"].value_counts().to_dict()
    run = json.loads((exp_dir / "run.json").read_text()) if (exp_dir / "run.json").is_file() else {}
    wall = run.get("wall_s")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vitsearch: {html.escape(exp_dir.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Search {html.escape(exp_dir.name)}</h1>"]
    summary = [["trials", len(trials)], *[[s.replace("_", " "), counts.get(s, 0)] for s in STATUSES if counts.get(s)],
               ["trial-epochs run", len(epochs)],
               ["sum of trial wall times (s)", float(trials["wall_time_s"].sum())]]
    if wall is not None:
        runs = len(run.get("run_walls", [wall]))
        summary.append(["search wall time (s)" + (f", summed over its {runs} runs" if runs > 1 else ""),
                        f"{wall:,.0f}"])
    if best is not None:
        summary.append([f"best {space.metric} (full budget)", f"{best[metric]:.4f} (Optuna #{best['optuna_number']})"])
    parts += ["<h2>Outcome</h2>", _table(summary, ["", ""])]
    majority = run.get("val_majority", ())  # (a search made before it was kept: none)
    if len(majority) == 2 and (note := chance_note(best_val_acc(trials), *majority)) is not None:
        parts.append(f"<p class='note'>{html.escape(note[6].upper() + note[7:])}.</p>")
    ended = trials[trials["status"].isin(["failed", "diverged"])]
    if len(ended):  # why trials failed or diverged, each reason once, with its trials
        why = ended.groupby(["status", "reason"], sort=False, dropna=False)["optuna_number"]
        parts.append(_table([[status, reason, ", ".join(f"#{n}" for n in numbers)]
                             for (status, reason), numbers in why], ["ended", "reason", "trials"]))
    parts += ["<h2>Best trial against the recommended defaults</h2>", _comparison(space, best, defaults)]
    parts += ["<h2>Learning curves</h2>", _img("learning_curves.png", pngs["learning_curves.png"], "learning curves"),
              "<p class='note'>Every trial's schedule (warmup + cosine) spans the full budget, so a trial stopped "
              "at a rung never finished its learning-rate decay: stopping-style ASHA judges trials before "
              "their schedules end. A trial that stops between rungs was outranked by later trials at a rung it had "
              "already passed (every trial is checked again after each epoch).</p>"]
    parts += ["<h2>Best trial, epoch by epoch</h2>", _img("best_trial.png", pngs["best_trial.png"], "best trial")]
    parts += ["<h2>Attention maps</h2>", f"<p class='note'>{html.escape(attention_note)}</p>"]
    if "attention_maps.png" in pngs:
        parts.append(_img("attention_maps.png", pngs["attention_maps.png"], "attention maps of the best trial"))
    parts += ["<h2>Knobs</h2>", _img("importance.png", pngs["importance.png"], "importance"),
              _img("knobs.png", pngs["knobs.png"], "metric against each knob"),
              _img("parallel.png", pngs["parallel.png"], "parallel coordinates")]
    if importances:
        parts += [f"<p class='note'>Importance: {html.escape(_importance_basis(importances, completed))}.</p>",
                  _table([[k, v] for k, v in importances.items()], ["knob", "importance"])]
    else:
        parts.append(f"<p class='note'>Importance: none: {html.escape(none_why)}.</p>")
    top = ranked(trials, space).head(10)
    parts += ["<h2>Top trials (full budget)</h2>",
              _table([[f"#{r['optuna_number']}", metric_text(r[metric]), r["best_epoch"], *(r[k] for k in space.search)]
                      for _, r in top.iterrows()], ["trial", metric, "best epoch", *space.search])]
    gpu_share = 1 / run["packing"]["trials_per_gpu"] if run.get("packing") else space.gpu
    from .cli import count

    extended = run.get("extensions", 0)  # the space's num_samples, and the trials added to it since
    settings = [["metric / mode", f"{space.metric} / {space.mode}"],
                ["trials", f"{space.num_samples} + {len(trials) - space.num_samples} added by --extend "
                 f"({count(extended, 'run')})" if extended else space.num_samples],
                ["ASHA", f"max {space.max_epochs} epochs, grace {space.grace_period}, factor {space.reduction_factor}"],
                ["resources per trial", f"{space.cpu:g} CPU, {gpu_share:g} GPU"], ["seed", space.seed],
                *([["GPU packing (gpu: auto)", _packing_text(run["packing"])]] if run.get("packing") else []),
                *[[f"fixed {k}", v] for k, v in space.fixed.items()],
                *[[f"search {k}", d.describe()] for k, d in space.search.items()]]
    if (exp_dir / "reproduce.parquet").is_file():
        reproduced = pd.read_parquet(exp_dir / "reproduce.parquet")
        searched_on = space.fixed.get("data", TrainConfig.data)
        best_now = None if best is None or pd.isna(best["optuna_number"]) else int(best["optuna_number"])
        parts += ["<h2>Reproduced over seeds</h2>", _reproduced(reproduced, space.metric, searched_on, best_now)]
    parts += ["<h2>Settings</h2>", _table(settings, ["", ""]), "<h2>Hardware</h2>", _table(_hardware(), ["", ""])]
    parts.append("</body></html>")
    return "\n".join(parts)


def _packing_text(packing: dict) -> str:
    from .packing import Packing

    return Packing(packing["trials_per_gpu"], packing["reason"], packing["measured"]).describe()


def _reproduced(runs: pd.DataFrame, metric: str, searched_on: str | None = None, best_now: int | None = None) -> str:
    from .reproduce import SAME_TRIAL, difference_line, summary

    if f"final_{metric}" not in runs:  # written before reproduce compared by the search's metric
        metric = "val_acc"
    counts = summary(runs, metric)
    lost = bool(counts["diverged"].any())  # diverged runs have no final metric: left out, and counted
    rows = [[name, *((metric_text(r["mean"]), metric_text(r["std"])) if r["seeds"] else ("-", "-")), int(r["seeds"]),
             *([int(r["diverged"])] if lost else [])] for name, r in counts.iterrows()]
    text = _table(rows, ["config", f"mean final {metric}", "std", *(["finished", "diverged"] if lost else ["seeds"])])
    if set(runs["config"]) == {"search best", "recommended defaults"}:
        text += f"<p>{html.escape(difference_line(runs, metric))}</p>"
    elif "trial" in runs and best_now is not None and len(runs["trial"].dropna()):  # the defaults alone
        text += (f"<p>{html.escape(SAME_TRIAL)}.</p>" if set(runs["trial"].dropna()) == {best_now} else
                 f"<p><b>The search's best was the recommended defaults' trial when this was reproduced; it is now "
                 f"#{best_now}</b> (trials were added since): <code>reproduce --from</code> again to compare it.</p>")
    # `reproduce --data` may train elsewhere than the search did: the reader must not take one for the other
    trained_on = sorted(set(runs["data"].dropna())) if "data" in runs else []  # (unknown in older files)
    if trained_on:
        other = searched_on is not None and trained_on != [searched_on]
        text += (f"<p><b>Trained on {html.escape(', '.join(trained_on))}, not on the search's data "
                 f"({html.escape(searched_on)})</b>: the search's figures above are not comparable with these.</p>"
                 if other else f"<p>Trained on {html.escape(', '.join(trained_on))}.</p>")
    # an --extend after the reproduce may have found another best: the figures above are then another trial's
    reproduced = runs.loc[runs["config"] == "search best", "trial"].dropna() if "trial" in runs else []
    if len(reproduced) and best_now is not None and int(reproduced.iloc[0]) != best_now:
        text += (f"<p><b>The search best reproduced here is trial #{int(reproduced.iloc[0])}; the search's best is "
                 f"now #{best_now}</b> (trials were added since): <code>reproduce --from</code> again to compare "
                 "it.</p>")
    return text + "<p class='note'>Each seed draws its own split, initialisation, order and augmentation.</p>"


METRIC_COLUMNS = ("final_val_acc", "best_val_acc", "final_val_loss", "best_val_loss", "final_train_loss")


def _comparison(space: SearchSpace, best, defaults: pd.DataFrame) -> str:
    if best is None or defaults.empty:
        return "<p>No completed trial to compare.</p>"
    d = defaults.iloc[0]
    keys = dict.fromkeys([f"final_{space.metric}", "best_val_acc", "final_val_loss", "epochs_run", "status",
                          "images_per_s", "wall_time_s", *space.search])  # (a val_loss search: its metric once)
    rows = []
    for key in keys:
        pair = (best[key], d[key])
        numeric = all(isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_)) for v in pair)
        diff = best[key] - d[key] if numeric else ""
        if key in METRIC_COLUMNS:
            rows.append([key, metric_text(best[key]), metric_text(d[key]),
                         metric_text(diff, sign=True) if numeric else diff])
        else:
            rows.append([key, best[key], d[key], diff])
    return _table(rows, ["", f"best (#{best['optuna_number']})", f"defaults (#{d['optuna_number']})",
                         "difference"])


def _hardware() -> list[list]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [["machine", platform.platform()], ["CPU cores", cpus], ["GPU", gpu], ["torch", torch.__version__],
            ["python", platform.python_version()]]


# --- attention maps ------------------------------------------------------------------------------

ATTENTION_IMAGES = 4
ATTENTION_CELL_INCHES = (1.45, 1.6)


def attention_png_size(layers: int, images: int) -> tuple[int, int]:
    """Pixel size of the attention-map PNG: one row per image; image, each layer and rollout as columns."""
    width, height = ATTENTION_CELL_INCHES
    return round(width * (layers + 2) * DPI), round(height * images * DPI)


def attention_maps_png(model, data) -> bytes | None:
    """PNG grid for `ATTENTION_IMAGES` fixed validation images (the first of distinct classes): the image,
    its CLS attention over the patch grid in every layer (mean over heads) and the attention rollout,
    each map drawn over the faded image. None when the model has no full attention to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    from .augment import normalize
    from .monitor import attention_maps

    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        return None
    picked: list[int] = []
    seen: set[int] = set()
    for i, label in enumerate(data.val_y.tolist()):
        if label not in seen:
            picked.append(i)
            seen.add(label)
        if len(picked) == ATTENTION_IMAGES:
            break
    device = next(model.parameters()).device
    raw = data.val_x[picked]
    inputs = normalize(raw.to(device))
    try:
        _, cls, rollout = attention_maps(model, inputs)
    except ValueError:
        return None
    with torch.no_grad():
        model.eval()
        preds = model(inputs).argmax(1).tolist()
    size = raw.shape[-1]
    layers = cls.shape[0]
    cols = layers + 2
    # One mosaic of composited cells on one axes: 0.12-0.13 s to draw, against 0.31-0.71 s for 24 axes.
    gap = max(1, size // 8)
    mosaic = np.ones((len(picked) * (size + gap) - gap, cols * (size + gap) - gap, 3))
    inferno = plt.get_cmap("inferno")
    for r in range(len(picked)):
        img = raw[r].permute(1, 2, 0).float().numpy() / 255.0  # uint8 pixels
        gray = np.repeat(_unit(img.mean(-1) if img.shape[-1] > 1 else img[..., 0])[..., None], 3, -1)
        faded = 0.4 * (0.6 * gray + 0.4)  # the image faded under each map (alpha 0.6 over white, then 0.4)
        panels = [None, *[cls[layer, r] for layer in range(layers)], rollout[r]]
        for c, attn in enumerate(panels):
            if attn is None:
                cell = img if img.shape[-1] == 3 else gray
            else:  # the map over the faded image (each on its own colour scale)
                grid = F.interpolate(attn[None, None].float().cpu(), size=(size, size), mode="nearest")[0, 0]
                cell = 0.6 * inferno(_unit(grid.numpy()))[..., :3] + faded
            y, x = r * (size + gap), c * (size + gap)
            mosaic[y:y + size, x:x + size] = cell
    inches = tuple(px / DPI for px in attention_png_size(layers, len(picked)))
    fig, ax = plt.subplots(figsize=inches)
    ax.imshow(mosaic, interpolation="nearest")
    centres = [i * (size + gap) + (size - 1) / 2 for i in range(max(cols, len(picked)))]  # of the cells
    ax.set_xticks(centres[:cols], ["image", *(f"layer {c}" for c in range(1, layers + 1)), "rollout"], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(centres[:len(picked)],
                  [f"{data.classes[data.val_y[i]]}\n→ {data.classes[preds[r]]}" for r, i in enumerate(picked)],
                  fontsize=7)
    for label, (r, i) in zip(ax.get_yticklabels(), enumerate(picked)):
        label.set_color("#1b7837" if data.val_y[i] == preds[r] else "#d73027")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle("CLS-token attention over the patches (mean over heads), fixed validation images; "
                 "each map on its own colour scale; row label: true → predicted", fontsize=8)
    fig.tight_layout()
    return _png(fig, tight=False)


def _unit(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] by its own minimum and maximum, as imshow's default normalisation does."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
