"""The only Ray-aware module: Tuner + Optuna's TPE (seeded) + ASHA around the shared trainer.

Flow: `run_search(space, exp_dir)` starts (or joins) Ray, puts the dataset in the object store once,
and runs a `tune.Tuner` whose trainable (`_trial`) turns the sampled dict into a `TrainConfig` and
calls `train()`; the trainer's per-epoch report becomes `tune.report(metrics)`, and its checkpoint goes
to `TrialCheckpoints`, from where a restarted trial (retry, lost node, resumed search) continues.
Actors are reused between trials, so a trial starts without a new process, imports or data.

Optuna is told the truth about stopped trials (`BudgetAwareOptunaSearch`): Ray's stock
`OptunaSearch` records an ASHA-stopped trial as COMPLETE with its low-budget value; here it is PRUNED
at its last epoch, a diverged trial is COMPLETE with the worst value, a crashed one FAIL. The study
lives in `<experiment>/study.db` (SQLite), so `optuna.load_study` and optuna-dashboard open it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .config import TrainConfig, absolute_paths
from .errors import NonFiniteLossError, UserError
from .space import SearchSpace

STUDY_FILE = "study.db"
RAY_DIR = "ray"
EPOCHS_LOG = "epochs.jsonl"
ENDS_LOG = "trial_ends.jsonl"  # one line per finished trial: what a resumed search must not rerun
RAY_RESULT_KEYS = {"done", "training_iteration", "trial_id", "timestamp", "date", "time_this_iter_s", "time_total_s",
                   "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
                   "checkpoint_dir_name", "should_checkpoint", "experiment_tag", "config"}
CHECKPOINT_OF = "_checkpoint_of"  # config key: a re-issued trial continues this earlier Ray trial
SPACE_FILE = "space.yaml"
RUN_FILE = "run.json"

# Ray's per-trial JSON/CSV/TensorBoard loggers duplicate what epochs.jsonl records; skip their cost.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "100")


def study_storage(exp_dir: Path) -> str:
    return f"sqlite:///{(exp_dir / STUDY_FILE).resolve()}"


def study_name(exp_dir: Path) -> str:
    """The name of the Optuna study in `exp_dir`'s study.db: the folder's name when the search started. A
    folder renamed since holds it under its old name (an extension made a second, empty study next to it,
    and the reports did not find the study)."""
    import sqlite3

    path = exp_dir / STUDY_FILE
    if path.is_file():  # read directly: an Optuna storage costs ~25 ms more per call, and may write
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
                names = [row[0] for row in db.execute("SELECT study_name FROM studies")]
        except sqlite3.Error:  # not yet an Optuna study
            names = []
        if exp_dir.name not in names and len(names) == 1:
            return names[0]
    return exp_dir.name


def storage_root(storage: str | None, run: dict) -> str | None:
    """Where in `--storage` the experiment's Ray state and trial checkpoints live: a folder of its own
    (`storage_dir` in run.json). Experiments started before it used the storage's top folder, so two
    searches with one `--storage` (as the cluster example runs them) shared Ray's experiment state: a
    resumed search restored the other's trials."""
    return _join(storage, run["storage_dir"]) if storage and run.get("storage_dir") else storage


# --- per-trial checkpoints ------------------------------------------------------------------------

class TrialCheckpoints:
    """`<root>/checkpoints/<trial_id>/checkpoint.pt`, where root is a local or shared path or a pyarrow
    URI (s3://, gs://, ...). Written by the trial (upload of the trainer's file, then a rename), read
    by the same trial when Ray restarts it (retry, lost node, resumed search). Ray's own checkpoint
    mechanism is not used: its experiment snapshot lags behind the trials, and a restored trial could
    point at a checkpoint Ray had already deleted."""

    def __init__(self, root: str):
        from pyarrow import fs

        if "://" in root:
            self.fs, base = fs.FileSystem.from_uri(root)
        else:
            self.fs, base = fs.LocalFileSystem(), str(Path(root).resolve())
        self.base = f"{base.rstrip('/')}/checkpoints"

    def _path(self, trial_id: str) -> str:
        return f"{self.base}/{trial_id}/checkpoint.pt"

    def upload(self, local_file: Path, trial_id: str) -> None:
        final = self._path(trial_id)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = final + ".uploading"
        try:
            with open(local_file, "rb") as src, self.fs.open_output_stream(tmp) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except BaseException:  # (a full device: what it wrote is given back, for Tune's state to fit)
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp)
            raise
        self.fs.move(tmp, final)

    def download(self, trial_id: str, local_file: Path) -> bool:
        from pyarrow import fs

        if self.fs.get_file_info(self._path(trial_id)).type != fs.FileType.File:
            return False
        with self.fs.open_input_stream(self._path(trial_id)) as src, open(local_file, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return True

    def delete(self, trial_id: str) -> None:
        from pyarrow import fs

        folder = f"{self.base}/{trial_id}"
        if self.fs.get_file_info(folder).type == fs.FileType.Directory:
            self.fs.delete_dir(folder)


# --- the trial adapter ---------------------------------------------------------------------------

def _trial(config: dict[str, Any], data=None, base: dict[str, Any] | None = None, device: str = "auto",
           threads: int = 1, metric: str = "val_acc", worst: float = 0.0, checkpoint_root: str = "",
           checkpoint_every_s: float = 0.0, finished: dict[str, dict] | None = None, cwd: str = ".") -> None:
    """Ray Tune trainable: sampled dict -> TrainConfig -> train(), one report per epoch."""
    import ray
    import torch
    from ray import tune

    from .train import CHECKPOINT_NAME, train

    torch.set_num_threads(max(1, threads))
    node_id = ray.get_runtime_context().get_node_id()
    config = dict(config)
    trial_id = config.pop(CHECKPOINT_OF, None) or tune.get_context().get_trial_id()
    if trial_id in (finished or {}):
        # Finished before the driver was killed, after Tune's last snapshot: hand back the recorded
        # final result instead of training again.
        tune.report(finished[trial_id])
        return
    store = TrialCheckpoints(checkpoint_root)
    with tempfile.TemporaryDirectory(prefix="vitsearch-") as work:
        local = Path(work) / CHECKPOINT_NAME
        resume = work if store.download(trial_id, local) else None
        last_upload = [time.monotonic()]
        upload_epoch = [0]
        resumed_history: list[dict] = []

        def checkpoint_due(epoch: int) -> bool:
            # Checkpoints go to the store at most every checkpoint_every_s, and always at the last epoch;
            # the trainer writes one (locally, ~10 ms for a micro ViT) only for those epochs.
            if time.monotonic() - last_upload[0] >= checkpoint_every_s or epoch == cfg.epochs:
                upload_epoch[0] = epoch
            return upload_epoch[0] == epoch

        def report(metrics: dict[str, Any]) -> None:
            if upload_epoch[0] == metrics["epoch"]:
                store.upload(local, trial_id)
                last_upload[0] = time.monotonic()
            tune.report({**metrics, "diverged": 0, "failed": 0, "reason": "", "node_id": node_id})

        try:
            cfg = TrainConfig.from_dict(absolute_paths({**(base or {}), **config}, cwd, data=False))
            if resume:
                # A kill between a checkpoint upload and its report loses that epoch's report: repeat it.
                from .train import peek_history

                resumed_history = peek_history(local)
                if resumed_history:
                    tune.report({**resumed_history[-1], "diverged": 0, "failed": 0, "reason": "",
                                 "node_id": node_id})
            train(cfg, report, data=data, device=device, checkpoint_dir=work, resume_from=resume,
                  checkpoint_due=checkpoint_due)
        except NonFiniteLossError as exc:
            tune.report({"epoch": exc.epoch, metric: worst, "diverged": 1, "failed": 0, "reason": str(exc)})
        except UserError as exc:  # a config the data cannot take (e.g. batch > training images): no retry helps
            if unreadable_data(str(exc)) is not None:
                # a streamed file that went (or is missing on this node): every trial would fail on it, so this
                # one errors (resumed with the search) and the driver stops the search (stop_on_unreadable_data)
                raise
            tune.report({"epoch": 0, metric: worst, "diverged": 0, "failed": 1, "reason": str(exc)})


# --- Optuna, told the truth ----------------------------------------------------------------------

def _searcher_class():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class BudgetAwareOptunaSearch(OptunaSearch):
        """OptunaSearch that tells PRUNED for trials ASHA stopped before `max_epochs`."""

        def __init__(self, *args, max_epochs: int, worst: float, defaults: dict[str, Any],
                     defaults_inside: set[str], seed: int, startup_trials: int, **kwargs):
            self.max_epochs, self.worst, self.defaults = max_epochs, worst, defaults
            self.defaults_inside = defaults_inside
            self._last: dict[str, dict] = {}
            self._reported: dict[str, set[int]] = {}
            self._sampler_settings = (seed, startup_trials)
            super().__init__(*args, sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials),
                             **kwargs)
            # trials of earlier runs on this study (an extended search) are never re-issued as orphans
            self._first_number = len(self._ot_study.get_trials(deepcopy=False))
            if self._first_number:
                self._reseed()

        # The study's storage is not part of a saved state (Tune's tuner.pkl and searcher snapshot): it
        # held the experiment's absolute path, so a resumed copy of an experiment wrote its trials into the
        # original's study.db, and a moved one failed on the old path with a traceback. `attach` binds the
        # restored searcher to the study in the experiment folder as it is now.
        def __getstate__(self) -> dict:
            state = self.__dict__.copy()
            state["_storage"] = state["_ot_study"] = None
            state["_ot_trials"] = {k: t._trial_id for k, t in self._ot_trials.items()}  # ids, re-bound by attach
            return state

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)

        def save(self, checkpoint_path: str) -> None:
            import pickle

            with open(checkpoint_path, "wb") as file:
                pickle.dump(self.__getstate__(), file)

        def restore(self, checkpoint_path: str) -> None:
            import pickle

            with open(checkpoint_path, "rb") as file:
                state = pickle.load(file)
            study = self._ot_study
            self.__dict__.update({k: v for k, v in state.items() if k not in ("_storage", "_ot_study")})
            self._bind_trials(study)
            self._reseed()

        def attach(self, storage: str, study_name: str) -> None:
            """Bind a restored searcher to `study_name` in `storage` (the experiment folder's study.db)."""
            self._storage, self._study_name = optuna.storages.RDBStorage(storage), study_name
            study = optuna.load_study(study_name=study_name, storage=self._storage, sampler=self._sampler)
            self._bind_trials(study)

        def _bind_trials(self, study) -> None:
            self._ot_study = study
            self._ot_trials = {k: optuna.trial.Trial(study, t if isinstance(t, int) else t._trial_id)
                               for k, t in self._ot_trials.items()}

        def _reseed(self) -> None:
            """A sampler for a study that already holds trials: seeded from the space's seed and their
            number. A resumed search's searcher is a snapshot that can predate the last trials it proposed,
            and its sampler would draw what it drew for them again: after a killed driver, the first new
            trials had the configs of the ones re-issued as orphans (the same config trained twice). An
            extension's sampler, seeded as the first run, would replay its random start-up draws (while the study
            holds fewer finished trials than the start-up count)."""
            import numpy as np

            if getattr(self, "_sampler_settings", None) is None:  # a snapshot from an older version
                return
            seed, startup = self._sampler_settings
            number = len(self._ot_study.get_trials(deepcopy=False))
            drawn = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
            self._sampler = self._ot_study.sampler = optuna.samplers.TPESampler(seed=drawn, n_startup_trials=startup)

        def suggest(self, trial_id: str):
            orphan = self._next_orphan()
            if orphan is not None:
                return self._reissue(trial_id, orphan)
            if self.defaults is not None:
                return self._suggest_defaults(trial_id)
            params = super().suggest(trial_id)
            if params is not None:
                self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
                TRIAL_NUMBERS[trial_id] = (self._ot_trials[trial_id].number, False)
            return params

        def _next_orphan(self):
            """After a killed driver, Tune restores a snapshot that can predate the last trials it
            created; Tune then asks for that many trials again. Those Optuna trials (known to the study,
            unknown to this restored searcher) are handed out again, in order, instead of new ones."""
            known = {t.number for t in self._ot_trials.values()}
            for frozen in self._ot_study.get_trials(deepcopy=False):
                if frozen.number >= self._first_number and frozen.number not in known \
                        and "ray_trial_id" in frozen.user_attrs:
                    return frozen
            return None

        def _reissue(self, trial_id: str, frozen) -> dict[str, Any]:
            ot_trial = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            self._ot_trials[trial_id] = ot_trial
            TRIAL_NUMBERS[trial_id] = (frozen.number, bool(frozen.user_attrs.get("recommended_defaults")))
            if frozen.user_attrs.get("recommended_defaults"):
                self.defaults = None
            outside = {k.split(".", 1)[1]: v for k, v in frozen.user_attrs.items() if k.startswith("outside_space.")}
            source = frozen.user_attrs.get("checkpoint_of", frozen.user_attrs["ray_trial_id"])
            if not frozen.state.is_finished():
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                ot_trial.set_user_attr("checkpoint_of", source)
            else:
                self._completed_trials.add(trial_id)
            # `_checkpoint_of` tells the trial adapter whose checkpoint and recorded result to take over.
            return {**frozen.params, **outside, CHECKPOINT_OF: source}

        def _suggest_defaults(self, trial_id: str) -> dict[str, Any]:
            """The recommended-defaults trial, first. Values inside the space become its Optuna params
            (TPE learns from them); values outside it (e.g. batch 512 when the space offers 32-128) are
            kept as user attributes, since an Optuna param must lie inside its distribution."""
            point, self.defaults = self.defaults, None
            inside = {k: v for k, v in point.items() if k in self.defaults_inside}
            self._ot_study.enqueue_trial(inside)
            ot_trial = self._ot_study.ask(fixed_distributions={k: self._space[k] for k in inside})
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("recommended_defaults", True)
            TRIAL_NUMBERS[trial_id] = (ot_trial.number, True)
            for key, value in point.items():
                if key not in inside:
                    ot_trial.set_user_attr(f"outside_space.{key}", value)
            self._ot_trials[trial_id] = ot_trial
            return dict(point)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            self._last[trial_id] = result
            if result.get("diverged") or result.get("failed") or trial_id in self._completed_trials:
                return
            step, reported = int(result["epoch"]), self._reported.setdefault(trial_id, set())
            if step not in reported:  # a resumed trial re-reports epochs after its checkpoint
                reported.add(step)
                try:
                    self._ot_trials[trial_id].report(result[self.metric], step=step)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # told before the driver was killed; this searcher state is an older snapshot

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            result = result or self._last.pop(trial_id, None) or {}
            ot_trial = self._ot_trials[trial_id]
            state, value = optuna.trial.TrialState.COMPLETE, result.get(self.metric)
            # Tune hands the result that made ASHA stop a trial only to on_trial_complete: record it as
            # the trial's last intermediate value, the value Optuna keeps for a PRUNED trial.
            if value is not None and not (result.get("diverged") or result.get("failed")):
                self.on_trial_result(trial_id, result)
            if error or result.get("failed") or value is None:
                state, value, status = optuna.trial.TrialState.FAIL, None, "failed"
            elif result.get("diverged"):
                value, status = self.worst, "diverged"  # scored as worst: TPE learns that this region diverges
            elif int(result.get("epoch", 0)) < self.max_epochs:
                state, value, status = optuna.trial.TrialState.PRUNED, None, "stopped_early"  # at its last epoch
            else:
                status = "completed"
            self._completed_trials.add(trial_id)
            try:
                ot_trial.set_user_attr("status", status)
                if result.get("reason"):
                    ot_trial.set_user_attr("reason", str(result["reason"])[:500])
                self._ot_study.tell(ot_trial, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told before the driver was killed; this searcher state is an older snapshot

    return BudgetAwareOptunaSearch


# --- ASHA that keeps a trial only while it deserves its rung -------------------------------------

def rung_cutoff(recorded: list[float], reduction_factor: int) -> float | None:
    """The value a trial must reach (larger is better) to stay among the top floor(n / rf) of the n
    trials at a rung, itself included (at least the top one), given the `recorded` values of the
    others. None: nobody else is there yet."""
    values = sorted((v for v in recorded if not math.isnan(v)), reverse=True)
    if not values:
        return None
    return values[max(1, (len(values) + 1) // reduction_factor) - 1]


def asha_continue(rungs: list[tuple[int, dict]], unopposed: dict[int, set], trial_id: str, epoch: int,
                  value: float, reduction_factor: int) -> bool:
    """Record `value` at the trial's highest rung <= `epoch` and say whether the trial goes on. `rungs`:
    (milestone, {trial: value at the milestone}), highest first; `unopposed`: milestone -> the trials
    that went on there while fewer than `reduction_factor` trials had reached it. Both are updated.

    Arriving at a rung, a trial goes on if it is in the top fraction there (`rung_cutoff`): ASHA's
    promotion rule (Li et al. 2020), also Optuna's SuccessiveHalvingPruner's. Asynchronous ASHA decides
    on arrival, so the first trials of a search meet nobody at a rung and go on by default. Here a trial
    is checked again at every epoch: against the trials that have reached its last rung since, and, until
    it is on top among at least rf trials at its last rung, at each earlier rung where it went on while
    fewer than rf trials were there. It stops once it is outranked, instead of running to the full budget
    on no evidence. Ray's stock rule compares a newcomer once with an interpolated (1 - 1/rf) quantile
    of those before it; on the quickstart that let 6 of 16 trials (the recommended defaults, at 0.26,
    among them) run 20 epochs."""

    def on_top(recorded: dict) -> bool:
        cutoff = rung_cutoff([v for other, v in recorded.items() if other != trial_id], reduction_factor)
        return cutoff is None or recorded[trial_id] >= cutoff

    reached = [(milestone, recorded) for milestone, recorded in rungs if epoch >= milestone]
    if not reached:
        return True
    milestone, recorded = reached[0]
    recorded.setdefault(trial_id, value)
    if not on_top(recorded):
        return False
    if len(recorded) >= reduction_factor:  # on top among enough trials at its last rung: on merit
        for waiting in unopposed.values():
            waiting.discard(trial_id)
        return True
    unopposed.setdefault(milestone, set()).add(trial_id)
    for milestone, recorded in reached[1:]:
        waiting = unopposed.get(milestone, set())
        if trial_id in waiting:
            if not on_top(recorded):
                return False
            if len(recorded) >= reduction_factor:
                waiting.discard(trial_id)  # now promoted on merit
    return True


def _scheduler_class():
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    class RecheckingBracket(_Bracket):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.unopposed: dict[int, set] = {}

        def on_result(self, trial, cur_iter, cur_rew) -> str:
            if cur_rew is None:
                return TrialScheduler.CONTINUE
            keep = asha_continue(self._rungs, self.unopposed, trial.trial_id, cur_iter, cur_rew, int(self.rf))
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    class RecheckingASHA(AsyncHyperBandScheduler):
        """Ray's ASHA (asynchronous, stopping-style, one bracket) with `asha_continue`'s rule."""

        def __init__(self, *, grace_period: int, max_t: int, reduction_factor: int, **kwargs):
            super().__init__(grace_period=grace_period, max_t=max_t, reduction_factor=reduction_factor, **kwargs)
            self._brackets = [RecheckingBracket(grace_period, max_t, reduction_factor, 0)]

    return RecheckingASHA


# --- recording and progress ----------------------------------------------------------------------

def _callbacks(exp_dir: Path, live, checkpoint_root: str, max_epochs: int):
    from ray.tune import Callback

    class Recorder(Callback):
        """Appends every epoch result to epochs.jsonl (flushed: a killed driver loses nothing reported)."""

        def __init__(self, path, ends, view, checkpoint_root, max_epochs):
            self.path, self.ends, self.live, self.file = path, ends, view, None
            self.checkpoint_root, self.max_epochs = checkpoint_root, max_epochs

        def __getstate__(self):  # Tune pickles its callbacks with the experiment state
            return {**self.__dict__, "live": None, "file": None}

        def _show(self, trials, trial, result=None, status=None):
            if self.live is not None:
                self.live.update(trials, trial, result, status)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.file is None:
                self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed on_experiment_end)
            row = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
            row["trial_id"] = trial.trial_id
            self.file.write(json.dumps(row) + "\n")
            self._show(trials, trial, result)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._show(trials, trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = {k: v for k, v in (trial.last_result or {}).items() if isinstance(v, (int, float, str, bool))}
            with open(self.ends, "a") as f:  # keyed by lineage: a re-issued trial by the trial it continues
                lineage = trial.config.get(CHECKPOINT_OF) or trial.trial_id
                f.write(json.dumps({"trial_id": lineage, "last_result": last}) + "\n")
            if int(last.get("epoch", 0) or 0) < self.max_epochs:  # stopped early: nobody resumes it
                TrialCheckpoints(self.checkpoint_root).delete(trial.config.get(CHECKPOINT_OF) or trial.trial_id)
            self._show(trials, trial, status="TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._show(trials, trial, status="ERROR")
            self._full(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):  # a retry would fail as well
            self._full(trial)

        def _full(self, trial):
            try:
                text = Path(trial.error_file).read_text() if getattr(trial, "error_file", None) else ""
            except OSError:
                text = ""
            line = disk_full(text)
            if line is not None:
                stop_on_full_device(line)
            elif (line := unreadable_data(text)) is not None:
                stop_on_unreadable_data(line)

        def on_experiment_end(self, trials, **info):
            if self.file is not None:
                self.file.close()

    return [Recorder(exp_dir / EPOCHS_LOG, exp_dir / ENDS_LOG, live, checkpoint_root, max_epochs)]


# --- the search ----------------------------------------------------------------------------------

# The local Ray instance init_ray started in this process: its GCS address and the environment its processes
# inherited from this one.
_LOCAL_INSTANCE: list[tuple[str, dict[str, str]]] = []


class _NoMetricsFilesWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to fetch metrics")


class _FullDeviceNoise(logging.Filter):
    """Tune's tracebacks of a trial, or of its own state, that a full device stopped, and of trials that could
    not read the data (Ray's "unhandled error" of a second one, failing as the search stopped): the search says
    it in one line (`DISK_FULL`, `DATA_UNREADABLE`), and these lines would bury it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info and record.exc_info[1] else "")
        return not (any(t in text for t in (*FULL_DEVICE_TEXTS, UNREADABLE_TEXT))
                    or (DISK_FULL or DATA_UNREADABLE) and text.startswith("Trials did not complete"))


def init_ray(address: str | None, verbose: bool, address_checked: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.ERROR,
                                  configure_logging=True)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
    # Tune's result.json/progress.csv are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS: every result is in
    # epochs.jsonl), so its ResultGrid warns, with --verbose, that it "failed to fetch metrics" of every trial.
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    if not any(isinstance(f, _NoMetricsFilesWarning) for f in analysis.filters):
        analysis.addFilter(_NoMetricsFilesWarning())
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.tune.execution.experiment_state",
                 "ray._private.worker"):
        tune_logger = logging.getLogger(name)
        if not verbose and not any(isinstance(f, _FullDeviceNoise) for f in tune_logger.filters):
            tune_logger.addFilter(_FullDeviceNoise())
    if not address_checked:
        check_address(address, verbose)
    _no_crash_handler_in_driver()
    try:
        with _stops_wait_for_ray_init():
            if address:
                ray.init(address=address, **kwargs)
            else:
                # Tune's trial actors would set this in their runtime env; here every worker inherits it (and
                # the rest of this environment) from the driver, see _actors_on_prestarted_workers.
                os.environ.setdefault("PL_DISABLE_FORK", "1")
                with _ray_processes_in_their_own_group():
                    context = ray.init(address="local", **kwargs)  # a new local instance, even if a cluster runs here
                _LOCAL_INSTANCE[:] = [(context.address_info.get("gcs_address", ""), dict(os.environ))]
        stop_on_sigterm()  # instead of the handler ray.init has put in place
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        if address and _token_refused(exc):
            raise _token_error(address) from None
        where = f"--address {address!r}" if address else "a local Ray instance"
        raise UserError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                        "check that `ray start --head` runs there and the address is HOST:PORT") from None
    except SystemExit as exc:  # SIGTERM inside ray.init where Ray's own handler is in place: sys.exit(SIGTERM)
        if exc.code != signal.SIGTERM:
            raise
        STOP_SIGNALS.append(signal.SIGTERM)
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def _ray_processes_in_their_own_group():
    """The processes of the local Ray instance (GCS, raylet, dashboard and monitors) start in a process group of
    their own, as Ray's trial workers already do. A SIGTERM sent to the search's process group (GNU `timeout`,
    `kill -- -PGID`) then reaches the driver alone, which stops the trials and then Ray: it also reached the
    raylet and the GCS, which died with it, and the driver's stop then hung 60 s in Tune's cleanup waiting for
    the GCS and ended without its resume line. Ray's processes still die with the driver (Linux's
    parent-death signal, Ray's fate sharing); where the kernel lacks it, Ray's reaper needs the shared group,
    and nothing changes. Goes through Ray's private `services.ConsolePopen` (Ray does the same on Windows)."""
    try:
        from ray._private import services, utils
    except ImportError:
        yield
        return
    stock = getattr(services, "ConsolePopen", None)
    if stock is None or not sys.platform.startswith("linux") or not utils.detect_fate_sharing_support():
        yield
        return

    class OwnGroupPopen(stock):
        def __init__(self, *args, **kwargs):
            inner = kwargs.get("preexec_fn")

            def preexec_fn():
                os.setpgid(0, 0)
                if inner is not None:
                    inner()

            kwargs["preexec_fn"] = preexec_fn
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = stock


def check_resources(space: SearchSpace, address: str | None) -> str | None:
    """A trial's `resources` fit on some node of the Ray instance or cluster (one node: a trial is one
    process). Where none can hold one, Tune would wait for such a node without a word: on the local
    instance that is for ever (`gpu: 1` on a machine without a GPU, `cpu: 4` on 2 cores), an error; on a
    cluster (`--address`) one may yet join (an autoscaler), a note to print."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, name, need in (("CPU", "cpu", space.cpu), ("GPU", "gpu", space.gpu)):
        most = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if need > most + 1e-9:
            has = f"{most:g} {key}{'' if most == 1 else 's'}" if most else f"no {key}"
            if not address:
                fix = f"at most {most:g}" if most else "0"
                raise UserError(f"resources: {name} {need:g} per trial, but this machine's Ray instance has {has}: no "
                                f"trial could start; set resources.{name} to {fix}, or run on a cluster (--address) "
                                "whose nodes have more")
            return (f"note: resources: {name} {need:g} per trial, but no node of the cluster has more than {has}: "
                    "trials wait until such a node joins (an autoscaling cluster)")
    return None


def check_address(address: str | None, verbose: bool) -> None:
    """--address HOST:PORT names a Ray cluster that answers (in seconds; `ray.init` retries for minutes); `auto`
    finds one as ray.init does (RAY_ADDRESS, else the last `ray start` on this machine)."""
    if address == "auto":  # (without a cluster it failed only after the data had loaded, in ray.init)
        try:
            from ray._private.services import canonicalize_bootstrap_address  # ray.init's own look-up (not public)
        except ImportError:
            return
        try:
            canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise UserError("--address auto found no Ray cluster: RAY_ADDRESS is not set and no `ray start --head` "
                            "runs on this machine; start the cluster, or give its head's address as HOST:PORT, or "
                            "leave --address out for a Ray instance of this search's own") from None
        except ValueError as exc:  # RAY_ADDRESS holds something that is no address
            raise UserError(f"--address auto: {exc} (from RAY_ADDRESS); it must be HOST:PORT") from None
        return  # (the cluster found is left to ray.init, which joins it as `auto`, with its token where it wants one)
    if address:
        _check_reachable(address)
        if not address.startswith("ray://"):
            _check_gcs(address, verbose)


def _check_gcs(address: str, verbose: bool, timeout_s: float = 15.0) -> None:
    """One request to the cluster's GCS, as ray.init's first is, so that what ray.init would retry for long fails
    in seconds with one line: a cluster that wants a token this process does not send (ray.init: 20 retries of a
    second, each a warning line from Ray's C++ client), or a port where something answers but no GCS (each of the
    20 retries waits 40 s). Ray >= 2.59 turns token authentication on for `ray start --head` where
    ~/.ray/auth_token exists (any earlier local ray.init writes one), but a driver given an explicit address sends
    the token only with RAY_AUTH_MODE=token."""
    try:
        from ray._raylet import GcsClient  # the client ray.init itself starts with (not a public API)
    except ImportError:
        return
    with contextlib.nullcontext() if verbose else _stderr_silenced():
        outcome = _within(timeout_s, lambda: GcsClient(address=address, cluster_id=None))
    if outcome and outcome[0] is None:
        return
    if outcome and _token_refused(outcome[0]):
        raise _token_error(address)
    if not outcome or "Timed out" in str(outcome[0]):
        raise UserError(f"cannot join --address {address!r}: something answers there, but no Ray cluster did within "
                        f"{timeout_s:.0f} s; check the head's address and port (`ray start --head --port`)")
    # anything else is left to ray.init to report


def _within(timeout_s: float, call) -> list[BaseException | None]:
    """`call()` on a daemon thread, waited for at most `timeout_s`: [] if it is still running then (it is left
    to run out), [None] if it returned, [the exception] if it raised."""
    import threading

    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 (the caller sorts it out)
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome


def _token_error(address: str) -> UserError:
    return UserError(
        f"cannot join --address {address!r}: the cluster uses token authentication and has no token from this "
        f"process (RAY_AUTH_MODE here: {os.environ.get('RAY_AUTH_MODE', 'unset')}); run the search with "
        "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or the head's ~/.ray/auth_token on this "
        "machine; `ray get-auth-token` on the head prints it)")


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for a moment: Ray's C++ code logs there, past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_refused(exc: BaseException) -> bool:
    """Whether Ray's connection error comes from the cluster refusing the request for want of its token
    (ray.exceptions.AuthenticationError, "InvalidAuthToken", a few causes down the chain)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _stops_wait_for_ray_init():
    """Ctrl-C and SIGTERM during ray.init stop the search once ray.init has returned (~3 s at most), not in
    its middle. An exception raised there at an arbitrary point (Ray's own SIGTERM handler calls
    sys.exit; Python's SIGINT handler raises KeyboardInterrupt) can land in one of logging's weakref
    callbacks, which swallows it with logging's lock still held: the search then hung for good instead
    of stopping (1 of 12 `kill`s in one measurement). Ray's handler is kept out (it is put in place
    through ray._private.utils; where that is missing, a SystemExit from it is still taken as the stop)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        from ray._private import utils as ray_utils
    except ImportError:
        ray_utils = None
    stock = getattr(ray_utils, "set_sigterm_handler", None)
    deferred: list[int] = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: deferred.append(signum))
    if stock is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if stock is not None:
            ray_utils.set_sigterm_handler = stock
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if deferred:
        if deferred[0] == signal.SIGTERM:
            STOP_SIGNALS.append(signal.SIGTERM)
        raise KeyboardInterrupt


def _no_crash_handler_in_driver() -> None:
    """Ray's C++ crash handler, which the driver's core worker installs at ray.init, also takes SIGTERM:
    a `kill` inside ray.init dumped a stack and aborted, and ray.shutdown (run on a thread while the
    reports are drawn) put SIGTERM's default action back under our handler, so a `kill` then ended the
    process silently (-15) instead of stopping it cleanly. Only the driver goes without it (Ray's trial
    workers and its own processes keep theirs), and Python's faulthandler, which Ray enables, still
    prints a traceback on a crash. RAY_DISABLE_FAILURE_SIGNAL_HANDLER set by the user is respected."""
    if "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" in os.environ:
        return
    with contextlib.suppress(ImportError):
        from ray._private import ray_constants  # read when the driver's core worker starts

        if hasattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"):
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def check_storage(storage: str | None, timeout_s: float = 30.0) -> None:
    """`--storage` before anything starts or is written: a URI must open and answer (pyarrow, as Tune opens it)
    within `timeout_s`, a local folder must be one this process can write. Otherwise one line, exit code 2,
    instead of a traceback from inside Tune after the experiment folder was made."""
    if not storage:
        return
    if "://" not in storage:
        from .files import check_folder

        check_folder(storage, "--storage")
        return
    import pyarrow.fs

    def probe() -> None:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        fs.get_file_info(path)

    outcome = _within(timeout_s, probe)  # pyarrow's own retries can take minutes offline
    if not outcome:
        raise UserError(f"--storage {storage!r} did not answer within {timeout_s:.0f} s; check the URI, the network "
                        "and the credentials")
    if outcome[0] is not None:
        reason = str(outcome[0]).strip().splitlines()[0] if str(outcome[0]).strip() else repr(outcome[0])
        raise UserError(f"--storage {storage!r} cannot be used: {reason}")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes (ray.init retries an unreachable GCS for a long time)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} must be HOST:PORT (e.g. 127.0.0.1:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot start or reach --address {address!r}: {exc.strerror or exc}; check that "
                        "`ray start --head` runs there and the port is open") from None


def _restore_tuner(path: str, trainable, exp_dir: Path):
    """Tune's saved experiment, its searcher bound to the study in `exp_dir` as it is now (the study's
    storage is not part of the saved state). Tune pickles the searcher's class with it: an experiment
    started by an older version has the older searcher, whose saved state holds the study's absolute
    path; it resumes only where it started."""
    import sqlalchemy.exc
    from ray import tune

    here = study_storage(exp_dir)
    moved = UserError(f"{str(exp_dir)!r} was moved or copied after its search started, and a search started by "
                      "a vitsearch older than 2026-11-27 resumes only in the folder where it started; move it "
                      "back there to resume it")
    try:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    except sqlalchemy.exc.OperationalError:  # its study's old path no longer exists
        raise moved from None
    searcher = tuner._local_tuner._tune_config.search_alg
    if hasattr(searcher, "attach"):
        searcher.attach(here, study_name(exp_dir))
    elif getattr(getattr(searcher, "_storage", None), "url", here) != here:  # it would write into the original
        raise moved
    return tuner


def run_search(space: SearchSpace, exp_dir: Path, *, data, device: str = "auto", address: str | None = None,
               storage: str | None = None, verbose: bool = False, resume: bool = False, live=None,
               ray_dir: str = RAY_DIR, with_defaults: bool = True):
    """Run (or, with `resume`, continue) the search; returns Ray's ResultGrid. An extension of a finished
    search runs as another Ray experiment (`ray_dir`) on the same Optuna study, without a new defaults
    trial: TPE learns from every earlier trial."""
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    init_ray(address, verbose)
    exp_dir.mkdir(parents=True, exist_ok=True)
    ray_root = storage or str(exp_dir.resolve())
    threads = max(1, int(space.cpu))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, base=space.base_config(), device=device, threads=threads,
                             metric=space.metric, worst=space.worst, checkpoint_root=ray_root,
                             checkpoint_every_s=space.checkpoint_every_s,
                             finished=finished_trials(exp_dir) if resume else {}, cwd=os.getcwd()),
        {"cpu": space.cpu, "gpu": space.gpu})
    callbacks = _callbacks(exp_dir, live, ray_root, space.max_epochs)
    if resume:
        for frozen in optuna.load_study(study_name=study_name(exp_dir), storage=study_storage(exp_dir)).get_trials(
                deepcopy=False):  # the trials Tune continues are not proposed again
            if "ray_trial_id" in frozen.user_attrs:
                TRIAL_NUMBERS[frozen.user_attrs["ray_trial_id"]] = (
                    frozen.number, bool(frozen.user_attrs.get("recommended_defaults")))
        tuner = _restore_tuner(_join(ray_root, ray_dir), trainable, exp_dir)
        # callbacks are not part of the saved state; put ours back
        tuner._local_tuner._run_config.callbacks = callbacks
    else:
        defaults = space.defaults_point() if with_defaults else None
        searcher = _searcher_class()(
            space={k: d.to_optuna() for k, d in space.search.items()}, metric=space.metric, mode=space.mode,
            seed=space.seed, startup_trials=startup_trials(space.num_samples),
            study_name=study_name(exp_dir), storage=optuna.storages.RDBStorage(study_storage(exp_dir)),
            max_epochs=space.max_epochs, worst=space.worst, defaults=defaults,
            defaults_inside={k for k, v in (defaults or {}).items() if space.search[k].contains(v)})
        scheduler = _scheduler_class()(time_attr="epoch", metric=space.metric, mode=space.mode,
                                  max_t=space.max_epochs, grace_period=space.grace_period,
                                  reduction_factor=space.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.num_samples,
                                        max_concurrent_trials=space.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(
                name=ray_dir, storage_path=ray_root, verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=space.retries),
))
    stop_on_sigterm()
    SEARCH_STARTED[:] = _TUNE_RUNNING[:] = [True]
    # Tune's Ctrl-C handler stays in place after a search that no Ctrl-C stopped: a Ctrl-C while the
    # reports were drawn was ignored. Put back the one before it.
    ctrl_c = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        with _actors_on_prestarted_workers():
            return tuner.fit()
    finally:
        _TUNE_RUNNING.clear()
        if ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)


@contextlib.contextmanager
def _actors_on_prestarted_workers():
    """On a local Ray instance, Tune's trial actors start on the workers Ray prestarts at `ray.init`.

    Tune declares its actor class with a runtime env of environment variables (PL_DISABLE_FORK and the
    driver's AWS/checkpoint settings, `ray.tune.execution.class_cache`), and Ray never gives an actor
    with a runtime env a worker prestarted without one: it kills those and starts new processes, ~2 s
    later. Where every such variable already has that value in the environment the local instance's
    processes inherited from this one (`init_ray` sets PL_DISABLE_FORK there first), that runtime env
    changes nothing, and the class is declared without it: the quickstart's first training steps start
    ~1 s sooner. On a cluster (`--address`), or with any other runtime env, Tune's own class is kept."""
    try:
        from ray.tune.execution.class_cache import _ActorClassCache
    except ImportError:  # another Ray layout: Tune's default
        _ActorClassCache = None
    import ray

    here = ray.get_runtime_context().gcs_address
    inherited = next((env for address, env in _LOCAL_INSTANCE if address == here), None)
    if inherited is None or _ActorClassCache is None or not hasattr(_ActorClassCache, "get"):
        yield
        return
    stock = _ActorClassCache.get
    plain: dict = {}

    def get(self, trainable_cls, *args, **kwargs):
        remote_cls = stock(self, trainable_cls, *args, **kwargs)
        runtime_env = getattr(getattr(remote_cls, "__ray_metadata__", None), "runtime_env", None) or {}
        env_vars = dict(runtime_env).get("env_vars") or {}
        if args or kwargs or set(runtime_env) - {"env_vars"} or any(inherited.get(k) != v for k, v in env_vars.items()):
            return remote_cls
        if trainable_cls not in plain:
            plain[trainable_cls] = ray.remote(trainable_cls)
        return plain[trainable_cls]

    _ActorClassCache.get = get
    try:
        yield
    finally:
        _ActorClassCache.get = stock


STOP_SIGNALS: list[int] = []  # the signals that stopped this process's command early (SIGTERM, SIGPIPE)
DISK_FULL: list[str] = []  # why a full device stopped this process's search (a trial's or the driver's write)
# Ray's trial id -> (its Optuna number, whether it is the recommended defaults' trial), in the driver, for the
# progress lines: they named trials by Ray's id ("trial 0f43cdbb completed"), the summary and report.html by
# Optuna's number ("best #3", "#0 defaults"), and nothing printed tied one to the other.
TRIAL_NUMBERS: dict[str, tuple[int, bool]] = {}
SEARCH_STARTED: list[bool] = []  # [True] once tuner.fit() has been called in this process
_TUNE_RUNNING: list[bool] = []  # [True] while tuner.fit() runs


def stop_exit_code() -> int:
    """The exit code of a command stopped early: 143 after SIGTERM, 141 after its stdout was closed
    (SIGPIPE), 130 after Ctrl-C (SIGINT)."""
    return 128 + STOP_SIGNALS[0] if STOP_SIGNALS else 130


def stop_on_sigterm() -> None:
    """`kill PID` (SIGTERM: systemd, Kubernetes, a batch system's time limit) stops a search as Ctrl-C
    does. While Tune runs the trials it stops them and saves its state (Tune stops on SIGUSR1 as on
    SIGINT), and the search prints the resume command; before and after, the signal raises
    KeyboardInterrupt in the main thread. Ray's driver puts its own handlers in place at `ray.init` (an
    exit with code 15, later a stack dump and an abort), so this is called again after it and before
    `tuner.fit()`."""
    import threading

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    stop_as_on_ctrl_c(signum)


def stop_as_on_ctrl_c(signum: int) -> None:
    """Stop this command as Ctrl-C does, and exit with 128 + `signum`: while Tune runs the trials, by
    Tune's own graceful stop (SIGUSR1); before and after, by KeyboardInterrupt in the main thread."""
    STOP_SIGNALS.append(signum)
    if _TUNE_RUNNING and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        os.kill(os.getpid(), signal.SIGUSR1)
    elif threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt
    else:
        os.kill(os.getpid(), signal.SIGINT)


FULL_DEVICE_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def disk_full(error: BaseException | str | None) -> str | None:
    """The line of an exception (its chain included) or of a trial's error text that says a device is full
    (ENOSPC, EDQUOT, SQLite's "database or disk is full"), at most 300 characters; else None."""
    import errno

    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(error)[:300]
        if any(text in str(error) for text in FULL_DEVICE_TEXTS):
            return next(line for line in str(error).splitlines() if any(t in line for t in FULL_DEVICE_TEXTS))[:300]
        error = error.__cause__ or error.__context__
    if isinstance(error, str):
        lines = [line.strip() for line in error.splitlines() if any(t in line for t in FULL_DEVICE_TEXTS)]
        return lines[-1][:300] if lines else None
    return None


def cut_short_state(ray_root: str, ray_dir: str) -> str | None:
    """The file of Tune's saved state in `ray_root/ray_dir` (a local folder) that a full device cut short: its newest
    experiment_state-*.json that does not parse, or a newest search state file left empty. Tune then
    restores an empty run (it logs "Failed to restore the run state") and starts the search over; None where
    the state is whole (or not on this machine)."""
    folder = Path(ray_root) / ray_dir
    if "://" in ray_root or not folder.is_dir():
        return None
    for pattern in ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"):
        found = sorted(folder.glob(pattern))
        if not found:
            continue
        try:
            data = found[-1].read_bytes()
            if not data or (pattern.startswith("experiment") and not isinstance(json.loads(data), dict)):
                return str(found[-1])
        except (OSError, ValueError):
            return str(found[-1])
    return None


def stop_on_full_device(line: str) -> None:
    """A trial failed because a device it writes to is full: every other trial would fail the same way
    (and be recorded as failed), so the search stops as on Ctrl-C, resumable once there is space."""
    if not DISK_FULL:
        DISK_FULL.append(line)
        stop_as_on_ctrl_c(signal.SIGINT)


DATA_UNREADABLE: list[str] = []  # the data file a trial could not read, which stopped this process's search
UNREADABLE_TEXT = "cannot read image "  # data.py's error for an image file it cannot open


def unreadable_data(text: str) -> str | None:
    """The line of a trial's error (its traceback, or the error itself) that says it could not read one of
    the data's files (a streamed image folder's file removed, or missing on the trial's node), at most 300
    characters; else None."""
    line = next((line for line in text.splitlines() if UNREADABLE_TEXT in line), None)
    return None if line is None else line[line.index(UNREADABLE_TEXT):][:300]


def stop_on_unreadable_data(line: str) -> None:
    """A trial could not read a file of the data: every other trial would fail on it the same way (12 of 12
    failed, each recorded as failed for good), so the search stops as on Ctrl-C, resumable once it is back."""
    if not DATA_UNREADABLE and not DISK_FULL:
        DATA_UNREADABLE.append(line)
        stop_as_on_ctrl_c(signal.SIGINT)


def finished_trials(exp_dir: Path) -> dict[str, dict]:
    """Trials recorded as finished in trial_ends.jsonl, with their last result (torn lines skipped)."""
    finished = {}
    path = exp_dir / ENDS_LOG
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        finished[row["trial_id"]] = {k: v for k, v in row["last_result"].items() if k not in RAY_RESULT_KEYS}
    return finished


def ended_trials(results, exp_dir: Path) -> int:
    """How many of the trials in Tune's `results` ended: recorded as finished (completed or stopped by
    ASHA, in trial_ends.jsonl) or failed. Fewer than the trials: the search was interrupted (Ctrl-C),
    after which Tune marks the trials it stopped as terminated too."""
    finished = finished_trials(exp_dir)
    return sum(r.error is not None or ((r.config or {}).get(CHECKPOINT_OF) or Path(r.path).name) in finished
               for r in results)


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results. Optuna's 10 suits 100+ trials; with 16 it would
    leave TPE only 6, so a quarter of the budget is used (at least 4, at most 10)."""
    return min(10, max(4, num_samples // 4))


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


SIMULATED_TRIALS = 64  # the most trials `expected_trial_epochs` simulates


def _asha_state(rungs: list[tuple[int, dict]], unopposed: dict[int, set]) -> tuple:
    """What `asha_continue` decides by: the trials recorded at each rung and those that went on unopposed."""
    return tuple(frozenset(recorded) for _, recorded in rungs), tuple(sorted(
        (milestone, frozenset(trials)) for milestone, trials in unopposed.items()))


def expected_trial_epochs(space: SearchSpace, slots: int = 1, simulations: int = 200) -> tuple[float, float]:
    """Trial-epochs the search's ASHA (`asha_continue`) runs on average, and the epoch-times the search
    lasts (`slots` trials at a time, the last ones running alone at the end): a simulation, one epoch per
    tick, each trial of a fixed quality drawn at random plus a trend: TPE's proposals improve as the
    search goes on, and a later trial that beats the earlier ones runs further. A trend of half the
    random spread over the search matches the quickstart (measured 74-143 trial-epochs, means of 3 seeds
    108-119; this gives 113).

    A search of more than SIMULATED_TRIALS trials is simulated with that many and its slots in the same
    proportion, and scaled up: the simulation's cost grows with the square of the trials (a search of
    1,000 trials waited 35 s for its plan, one of 5,000 many minutes), and the trial-epochs per trial
    hardly change with the number of trials (the quickstart's space: 7.07 at 16 trials, 7.2 at 256 and 512)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rungs_desc = sorted(space.rungs, reverse=True)
    milestones = [*space.rungs, space.max_epochs]  # the epochs where a trial's next check can differ
    n = min(space.num_samples, SIMULATED_TRIALS)
    sim_slots = max(1, round(slots * n / space.num_samples))
    total = ticks = 0
    for _ in range(simulations):
        quality = rng.random(n) + 0.5 * np.arange(n) / n
        rungs: list[tuple[int, dict]] = [(m, {}) for m in rungs_desc]
        unopposed: dict[int, set] = {}
        running: dict[int, int] = {}
        waiting = list(range(n))
        while running or waiting:
            while waiting and len(running) < sim_slots:
                running[waiting.pop(0)] = 0
            before = _asha_state(rungs, unopposed), len(running)
            ticks += 1
            for trial in list(running):
                running[trial] += 1
                total += 1
                epoch = running[trial]
                if epoch >= space.max_epochs or not asha_continue(rungs, unopposed, trial, epoch, quality[trial],
                                                                  space.reduction_factor):
                    del running[trial]
            if running and before == (_asha_state(rungs, unopposed), len(running)):
                # nothing changed in this tick, so every tick until a trial's next rung (or the budget) repeats it:
                # skip them (epoch by epoch, `max_epochs: 100000` kept the plan waiting for many minutes)
                skip = min(min(m for m in milestones if m > e) - e for e in running.values()) - 1
                if skip > 0:
                    ticks += skip
                    total += skip * len(running)
                    running = {trial: e + skip for trial, e in running.items()}
    scale = space.num_samples / n
    return total / simulations * scale, ticks / simulations * scale * sim_slots / slots
