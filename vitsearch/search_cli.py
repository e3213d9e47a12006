"""`python main.py search`: validate everything, estimate the cost, run with a live view, write reports."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cli import command, console, count, duration, err_console, on_cluster, shell
from .errors import ConfigError, SpaceError, UserError

SECOND_PROBE_WITHIN_S = 5.0  # the smallest batch is probed too when the largest's probe took less (and both
                             # again, while Ray starts, when both took less)
SAY_PROBING_AFTER_S = 3.0  # a probe still running after Ray started (and this long): the plan says so
LOG_EVERY_S = 60.0  # without a terminal: a progress line per finished trial, and on a result at least this often


def add_search_parser(sub) -> None:
    se = sub.add_parser("search", help="run a hyperparameter search (Ray Tune + Optuna TPE + ASHA)")
    se.add_argument("--space", help="search-space YAML, or a name in search_spaces/ (e.g. quickstart)")
    se.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue an interrupted search")
    se.add_argument("--extend", metavar="EXPERIMENT_DIR", help="add --trials N trials to a finished search")
    se.add_argument("--trials", type=int, help="with --extend: how many trials to add")
    se.add_argument("--data", help="dataset spec replacing the space's fixed data (e.g. fashion_mnist)")
    se.add_argument("--device", default="auto", help="auto | cpu | cuda (per trial)")
    se.add_argument("--out", help="parent folder of the experiment folder (default: results)")
    se.add_argument("--name", help="experiment folder name (default: <space name>-<time>)")
    se.add_argument("--address", help="join an existing Ray cluster: HOST:PORT or auto")
    se.add_argument("--storage", help="shared path or URI for Ray's trial checkpoints (multi-node runs)")
    se.add_argument("--verbose", action="store_true", help="show Ray's own logs")


class LiveView:
    """A rich live table: every trial's status, epoch and metric; overall progress and time estimate. In a
    log or a pipe: a line per finished trial with the progress, and the progress at least every minute."""

    def __init__(self, space, expected_epochs: float, slots: int):
        self.space, self.expected_epochs, self.slots = space, expected_epochs, slots
        self.spare_cores = _cpus() > slots * space.cpu  # cores here that no trial uses
        self.start = time.time()
        self.rows: dict[str, dict] = {}
        self.reports_preloaded = False
        # rich redraws the live table only on a terminal; in a log or a pipe (nohup, CI, a cluster job)
        # the view prints plain progress lines instead.
        self.log_lines = not console.is_terminal
        self.last_line = self.start
        # Rendering happens on rich's own thread, 4 times a second: Tune waits for its callbacks before a
        # trial may continue, so drawing on every result would slow every epoch.
        self.live = Live(console=console, auto_refresh=True, refresh_per_second=4, transient=False)

    def __enter__(self):
        if not self.log_lines:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if not self.log_lines:
            self.live.__exit__(*exc)

    def update(self, trials, trial, result, status: str | None = None) -> None:
        for t in trials:
            row = self.rows.setdefault(t.trial_id, {"epoch": 0, "metric": None, "order": len(self.rows)})
            row["status"] = t.status
        if status is not None:  # Tune calls back on completion before it flips the trial's status
            self.rows[trial.trial_id]["status"] = status
        if status == "ERROR":
            self.rows[trial.trial_id]["error"] = _error_line(trial)
        if not self.reports_preloaded and result is not None and self._core_free():
            # Import what the reports need (~2 s of CPU) while trials train, on a core no trial uses.
            self.reports_preloaded = True
            preload("matplotlib.backends.backend_agg", "matplotlib.figure", "optuna.importance", "vitsearch.figures")
        if result is not None:
            row = self.rows[trial.trial_id]
            # a diverged trial reports the epoch it diverged in; it finished one less, as trials.parquet says
            row["epoch"] = max(row["epoch"], int(result.get("epoch", 0)) - bool(result.get("diverged")))
            row["metric"] = result.get(self.space.metric)
            row["last"] = result
        if self.log_lines:
            self._log(trial.trial_id, status)
        else:
            self.live.update(self.render(), refresh=False)

    def _log(self, trial_id: str, status: str | None) -> None:
        """A plain line when a trial ends, and on other events at most every LOG_EVERY_S."""
        if status is None and time.time() - self.last_line < LOG_EVERY_S:
            return
        self.last_line = time.time()
        line = self._progress()
        if status is not None:
            row = self.rows[trial_id]
            ended, reason = self._ended(trial_id, row)
            name = _trial_name(trial_id)
            if ended in ("failed", "diverged"):  # its metric is the worst by rule; why it ended says more
                line = f"trial {name} {ended} at epoch {row['epoch']}: {reason or 'no reason given'}; {line}"
            else:
                metric = "-" if row["metric"] is None else f"{row['metric']:.4f}"
                line = f"trial {name} {ended} at epoch {row['epoch']} ({self.space.metric} {metric}); {line}"
        console.print(line, highlight=False, soft_wrap=True)

    def _ended(self, trial_id: str, row: dict) -> tuple[str, str]:
        """An ended trial's status and reason as trials.parquet will have them."""
        from .report import TrialOutcome, trial_status

        error = row.get("error") if row["status"] == "ERROR" else None
        return trial_status(TrialOutcome(trial_id, {}, row.get("last") or {}, error), self.space.max_epochs)

    def _core_free(self) -> bool:
        """A core no trial uses: on a machine with more cores than trials, at once; where the trials use
        every core (the quickstart on 2 cores), once every trial has started and a slot has fallen idle.
        Imported beside busy trials, the ~2 s would slow them as much as it saves at the end."""
        if self.spare_cores:
            return True
        running = sum(r["status"] == "RUNNING" for r in self.rows.values())
        return len(self.rows) >= self.space.num_samples and running < self.slots

    def _progress(self) -> str:
        epochs_done = sum(r["epoch"] for r in self.rows.values())
        finished = sum(r["status"] in ("TERMINATED", "ERROR") for r in self.rows.values())
        elapsed = time.time() - self.start
        remaining = self.expected_epochs - epochs_done
        if finished >= self.slots:
            # ASHA may stop fewer trials than the plan's simulation expected (TPE's later trials all beating a
            # rung's median, as on a 200-trial search: "~33 s left" with half its trials to go). Once a round
            # of trials has ended, the rest are expected to run as many epochs as they did, on average.
            per_trial = sum(r["epoch"] for r in self.rows.values() if r["status"] in ("TERMINATED", "ERROR")) / finished
            observed = sum(max(0.0, per_trial - r["epoch"]) for r in self.rows.values()
                           if r["status"] not in ("TERMINATED", "ERROR"))
            remaining = max(remaining, observed + max(0, self.space.num_samples - len(self.rows)) * per_trial)
        # ASHA stops a trial only at a rung: a running one trains at least to its next. At the end, when one
        # trial runs on alone, its epochs take the slots' share of the time each (it said "~1 s left" of 13).
        floors = [self._next_rung(r["epoch"]) - r["epoch"] for r in self.rows.values() if r["status"] == "RUNNING"]
        remaining = max(remaining, sum(floors))
        if finished >= self.space.num_samples:
            eta = "done"
        elif not epochs_done:
            eta = "estimating"
        elif remaining > 0:
            seconds = max(remaining, max(floors, default=0) * min(self.slots, len(self.rows))) * elapsed / epochs_done
            eta = f"~{duration(seconds)} left"  # (hours in seconds were hard to read)
        else:  # ASHA let more trials go on than the plan's simulation expected
            eta = "past the estimate"
        return (f"{finished}/{self.space.num_samples} trials finished, {epochs_done} trial-epochs, "
                f"{elapsed:.0f}s elapsed, {eta}")

    def _next_rung(self, epoch: int) -> int:
        """The epoch of the next ASHA rung after `epoch` (grace period x reduction factor^k), or the budget."""
        rung = self.space.grace_period
        while rung <= epoch:
            rung *= self.space.reduction_factor
        return min(rung, self.space.max_epochs)

    def render(self):
        head = Text(self._progress())
        table = Table(box=None, pad_edge=False)
        for col in ("trial", "status", "epoch", self.space.metric):
            table.add_column(col, justify="right")
        running = [k for k, r in self.rows.items() if r["status"] == "RUNNING"]
        recent = sorted(self.rows, key=lambda k: self.rows[k]["order"])[-8:]
        for key in dict.fromkeys(running + recent):
            r = self.rows[key]
            status = self._ended(key, r)[0] if r["status"] in ("TERMINATED", "ERROR") else r["status"].lower()
            metric = "-" if r["metric"] is None or status in ("failed", "diverged") else f"{r['metric']:.4f}"
            table.add_row(_trial_name(key), status, f"{r['epoch']}/{self.space.max_epochs}", metric)
        return Group(head, table)


def _trial_name(trial_id: str) -> str:
    """A trial as the summary table and report.html name it, by its Optuna number ("#3", "#0 defaults"); by
    Ray's id where the searcher has not numbered it."""
    from .search import TRIAL_NUMBERS

    if trial_id not in TRIAL_NUMBERS:
        return trial_id
    number, defaults = TRIAL_NUMBERS[trial_id]
    return f"#{number}" + (" defaults" if defaults else "")


def _error_line(trial) -> str:
    """The last line of the exception a trial ended with (as trials.parquet's reason has it)."""
    from .report import error_line

    path = getattr(trial, "error_file", None)  # Tune appends each failure's text to it before this callback
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return error_line(text) if text.strip() else "error"


REPORT_FILES = ("trials.parquet", "epochs.parquet")  # a finished search without one: --resume writes them again


def cmd_search(args: argparse.Namespace) -> int:
    import shutil

    from .files import check_name, free_folder, lock_experiment, write_bytes
    from .search import RAY_DIR, RUN_FILE, cut_short_state, storage_root

    chosen = [flag for flag in ("space", "resume", "extend") if getattr(args, flag)]
    if len(chosen) != 1:
        raise UserError("give exactly one of --space NAME (a new search), --resume EXPERIMENT_DIR or "
                        "--extend EXPERIMENT_DIR")
    continued = "--resume" if args.resume else "--extend" if args.extend else None
    # RAY_ADDRESS as ray.init takes it (`ray job submit` sets it): the search started a Ray instance of its own
    from_env = not args.address and bool(os.environ.get("RAY_ADDRESS"))
    if from_env:
        args.address = os.environ["RAY_ADDRESS"]
    if continued and args.data:  # it was ignored: the trials went on with the experiment's data
        raise UserError(f"--data goes with --space (a new search); {continued} continues on the experiment's "
                        "own data (its space.yaml)")
    for flag in ("name", "out"):  # --out was ignored: the reports went on in EXPERIMENT_DIR
        if continued and getattr(args, flag):
            raise UserError(f"--{flag} goes with --space (a new search); {continued} continues in EXPERIMENT_DIR")
    args.out = args.out or "results"
    if args.storage and "://" not in args.storage:  # a local folder: Ray Tune takes only absolute paths
        args.storage = os.path.abspath(os.path.expanduser(args.storage))
    if args.trials is not None and not args.extend:
        raise UserError("--trials goes with --extend (a new search takes num_samples from its space)")
    if args.resume or args.extend:
        exp_dir, space, run = _existing(Path(args.resume or args.extend), "--resume" if args.resume else "--extend")
        device, storage = args.device if args.device != "auto" else run["device"], args.storage or run["storage"]
        ray_dir = run.get("ray_dir", RAY_DIR)
        if args.resume and ray_dir != RAY_DIR and run.get("extension_trials"):
            # the last run was an extension: resuming continues its trials, not the space's num_samples
            space = replace(space, num_samples=run["extension_trials"])
        ray_root = storage_root(storage, run) or str(exp_dir.resolve())
        if args.resume and run.get("finished") == ray_dir and all((exp_dir / f).is_file() for f in REPORT_FILES):
            return _show_finished(space, exp_dir, run)  # (needs none of Ray's state, wherever it was moved)
        if args.resume and "://" not in ray_root and not (Path(ray_root) / ray_dir).is_dir():
            other = args.storage and args.storage != run.get("storage")  # (a moved --storage is found where it went)
            raise UserError(f"--resume {args.resume!r}: Ray's experiment state ({ray_root}/{ray_dir}) is missing" + (
                f"; the search ran with --storage {run.get('storage') or 'none (in the experiment folder)'}: leave "
                "--storage out to resume it there, or give the folder it was moved to" if other else ""))
        if args.extend:
            if args.trials is None or args.trials < 1:
                raise UserError("--extend needs --trials N with N >= 1 (how many trials to add)")
            space = replace(space, num_samples=args.trials)
            ray_dir = f"{RAY_DIR}-extend-{run.get('extensions', 0) + 1}"
        elif (broken := cut_short_state(ray_root, ray_dir)) is not None:
            # Tune would restore an empty run and start the search over, rerunning what is done
            raise UserError(f"--resume {args.resume!r}: Ray's saved state was cut short ({broken} is not complete: "
                            "a full device, or a copy that stopped), so the search cannot go on from it; its trials "
                            "are in study.db and epochs.jsonl")
        from .files import check_folder

        check_folder(exp_dir, continued)  # a folder it cannot write (read-only): one line before Ray starts
    else:
        space = load_space_arg(args.space, args.data)
        check_name(args.name)
        if args.name:
            exp_dir = Path(args.out) / args.name
            if exp_dir.exists() and any(exp_dir.iterdir()):
                raise UserError(f"experiment folder {str(exp_dir)!r} already exists; use --resume or another --name")
        else:  # searches launched in the same second (a script's loop) get -2, -3, ...
            args.default_dir = Path(args.out) / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            exp_dir = free_folder(args.default_dir)
        device, storage, ray_dir, run = args.device, args.storage, RAY_DIR, {}

    from .search import SEARCH_STARTED, stop_exit_code, stop_on_sigterm

    if from_env:  # (said once the command is known to go on, not before a line that refuses it)
        console.print(f"joining the Ray cluster at RAY_ADDRESS={args.address} (unset RAY_ADDRESS for a Ray instance "
                      "of this machine alone)", highlight=False, soft_wrap=True)
    if not args.space:  # a new search locks its folder once it has claimed it
        lock_experiment(exp_dir)
    stop_on_sigterm()  # from here `kill PID` stops the search as Ctrl-C does
    run_before = (exp_dir / RUN_FILE).read_bytes() if args.extend else None
    try:
        return _prepare_and_run(space, exp_dir, device, storage, ray_dir, run, args)
    except KeyboardInterrupt:
        if SEARCH_STARTED:  # a second Ctrl-C while Tune stops, or a stop while the reports are drawn
            if not getattr(args, "parquet_written", False):  # (then the line says what `report` draws)
                console.print(f"interrupted; continue with: {command()} search --resume "
                              f"{escape(shell(getattr(args, 'claimed', None) or exp_dir))}{on_cluster(args.address)}",
                              highlight=False, soft_wrap=True)
            raise  # the experiment is kept as it is
        # Ctrl-C or SIGTERM before Ray Tune started: nothing was trained, and the experiment folder (the
        # space and the empty study) would be one that --resume cannot continue.
        removed = getattr(args, "claimed", None) if args.space else None  # never a folder another search claimed
        if removed:
            shutil.rmtree(removed, ignore_errors=True)
        elif run_before is not None:
            write_bytes(run_before, exp_dir / RUN_FILE)
        console.print("interrupted before any trial started: nothing was trained" +
                      (f"; {removed} was removed" if removed else ""), highlight=False, soft_wrap=True)
        return stop_exit_code()


def _prepare_and_run(space, exp_dir: Path, device: str, storage, ray_dir: str, run: dict, args) -> int:
    from .config import read_yaml
    from .data import load_data
    from .files import check_folder, claim_folder, lock_experiment, write_bytes, write_yaml
    from .search import RUN_FILE, SPACE_FILE, check_address, check_resources, check_storage, init_ray, storage_root

    check_storage(storage)  # before anything is loaded, started or written
    if not args.address:  # (on a cluster the trials may run where the GPUs are)
        from .train import resolve_device

        resolve_device(device)
    if args.space:
        check_folder(args.out, "--out")
    check_address(args.address, args.verbose)  # a cluster that does not answer: one line, before the data loads
    data = load_data(space.trial_config({}))  # once per search; every trial shares it through Ray's object store
    fingerprint = data.fingerprint()
    if run.get("data", fingerprint) != fingerprint:
        raise UserError(f"the data of {str(exp_dir)!r} changed since the search started: {data.name!r} held "
                        f"{run['data']} then and holds {fingerprint} now, so its trials' train/validation split "
                        "would differ; restore the data, or start a new search")
    # batch sizes larger than the data are not sampled
    space, left_out = space.fit_to_data(len(data.train_y), data.name, args.space or str(exp_dir / SPACE_FILE))
    _print_header(space, data)
    _check_model_sources(space, data, args.space or str(exp_dir / SPACE_FILE), new=bool(args.space))
    # On a CPU the throughput probe runs while Ray starts (mostly waiting on processes); on a GPU after
    # the packing probe, which needs Ray and the whole GPU.
    early = _Probe(space, data, device) if not _packs(space, device) else None
    # Ray Tune and Optuna's storage take ~2 s to import; ray.init spends about as long waiting on processes.
    preload("ray.tune", "ray.tune.search.optuna")
    try:
        init_ray(args.address, args.verbose, address_checked=True)  # before anything is written
        waits = check_resources(space, args.address)
        space, packing = _packing(space, data, device, run.get("packing"))
        expected_epochs = _print_plan(space, data, device,
                                      early.result() if early else _Probe(space, data, device).result(),
                                      "\n".join(n for n in (left_out, waits, _half_on_cpu(space, device, args))
                                                if n) or None)
    except BaseException:  # Ray cannot start, or Ctrl-C or SIGTERM before the plan
        if early is not None:
            early.cancel()
        raise
    if not args.resume:
        if not args.extend:
            # another search started meanwhile may have written its space.yaml
            exp_dir = claim_folder(exp_dir, None if args.name else args.default_dir,
                                   lambda folder: write_yaml(space.source, folder / SPACE_FILE, exclusive=True),
                                   f"experiment folder {str(exp_dir)!r} was taken by another search started "
                                   "meanwhile; pick another --name (nothing of either search was changed)")
            args.claimed = exp_dir  # from here a stop before the first trial removes the folder
            lock_experiment(exp_dir)
        if storage and not run.get("storage"):  # each experiment's Ray state and checkpoints in a folder of its own
            run = {**run, "storage_dir": f"{exp_dir.name}-{uuid.uuid4().hex[:8]}"}
        from .report import val_majority

        extensions = run.get("extensions", 0) + (1 if args.extend else 0)
        extension = {"extension_trials": space.num_samples} if args.extend else {}
        # the space as written, which a --resume, --extend, report or reproduce --from checks space.yaml against
        recorded = run.get("space") if args.extend else \
            json.loads(json.dumps(read_yaml(exp_dir / SPACE_FILE, "search space"), default=str))
        write_bytes(json.dumps({**run, "device": device, "storage": storage, "address": args.address,
                                "ray_dir": ray_dir, "extensions": extensions, "packing": packing,
                                "data": run.get("data", fingerprint), "val_majority": val_majority(data), **extension,
                                **({"space": recorded} if recorded is not None else {})}).encode(),
                    exp_dir / RUN_FILE)
    else:  # a resume: where it goes on now (a moved --storage, another head) is where the next one goes on
        where = {"storage": storage, "address": args.address or run.get("address")}
        if any(run.get(k) != v for k, v in where.items()):
            write_bytes(json.dumps({**run, **where}).encode(), exp_dir / RUN_FILE)
    return _run_and_report(space, exp_dir, data, device, args, storage_root(storage, run), ray_dir, expected_epochs)


def _check_model_sources(space, data, origin: str, new: bool = True) -> None:
    """Each searched `teacher` and `init_from` value loads, with this data, before any trial: a missing or
    mismatched one failed every trial that drew it while the others ran on (a fixed one the probe loads).
    A searched `patch_size` must divide this data's image size, and a searched `linformer_k` stay below the
    tokens it makes (5 of 6 trials failed). Those two checks guard new searches against wasted trials: an
    experiment made before them is still resumed and extended (as space.parse_space's `new`)."""
    searched = [key for key in ("teacher", "init_from") if key in space.search]
    if new:
        _check_patch_sizes(space, data, origin)
        _check_linformer_k(space, data, origin)
        _check_init_shapes(space, data, origin)
    if not searched:  # (the usual case: nothing to import, the trainer's imports stay on the probe's thread)
        return
    import torch

    from .distill import load_teacher
    from .model import build_model

    for key in searched:
        dist = space.search[key]
        for value in dist.choices if dist.kind == "choice" else ():
            if value is None:  # (none: the trial trains without)
                continue
            try:
                cfg = space.trial_config({key: value})
                if key == "teacher":
                    load_teacher(cfg, data, torch.device("cpu"))
                else:
                    build_model(cfg, data.channels, data.image_size, data.num_classes)
            except ConfigError as exc:
                raise SpaceError(f"{origin}: search.{key}: {exc}; every trial with it would fail") from None


# searched keys that change the shapes of a model's weights (a patch size or image size is resampled to)
WEIGHT_SHAPE_KEYS = ("model", "depth", "embed_dim", "stem", "attention")


def _check_init_shapes(space, data, origin: str) -> None:
    """Pretrained weights (`init_from`, fixed or each searched choice) must fit every model shape the trials
    can draw: with a patch-stem checkpoint and `stem: {choice: [patch, conv]}`, each trial that drew the conv
    stem failed as it started ("no weights for 'patch_embed.proj.0.weight'", 3 of 4) while the others ran on;
    the probe loads them into the largest and the smallest model of a searched depth or width, and said only
    that init_from did not fit. The ends of a searched model, depth and width (`_model_ends`) and each choice
    of model, stem and attention are loaded, with this data, before any trial. Weights that fit not even
    TrainConfig's shape are left to the probe (fixed) or to the searched init_from's own check."""
    searched = [key for key in WEIGHT_SHAPE_KEYS if key in space.search]
    init = space.search.get("init_from")
    sources = [v for v in init.choices if v is not None] if init is not None and init.kind == "choice" else \
        [space.trial_config({}).init_from]
    if not searched or not any(sources):
        return
    from .model import build_model

    points = [end for end in _model_ends(space, data.image_size) if end]
    points += [{key: v} for key in ("model", "stem", "attention") if key in space.search
               for v in space.search[key].choices]
    for source in filter(None, sources):
        try:
            build_model(space.trial_config({"init_from": source}), data.channels, data.image_size, data.num_classes)
        except ConfigError:
            continue  # (not the searched shape's doing)
        for point in points:
            try:
                cfg = space.trial_config({**point, "init_from": source})
            except ConfigError:
                continue  # (a shape that builds no model: the space's checks and notes say so)
            try:
                build_model(cfg, data.channels, data.image_size, data.num_classes)
            except ConfigError as exc:
                drawn = {k: v for k, v in point.items() if k in searched}
                text, name = str(exc), repr(source)
                reason = text[text.index(name) + len(name) + 2:-1] if f"{name} (" in text else text
                key = next(iter(drawn))
                raise SpaceError(
                    f"{origin}: search.{key}: {space.search[key].describe()} draws "
                    f"{', '.join(f'{k} {v}' for k, v in drawn.items())}, which the weights of init_from {source!r} "
                    f"do not fit ({reason}): every trial that drew it would fail; search only shapes the weights "
                    f"fit, or fix {' and '.join(drawn)}") from None


def _check_patch_sizes(space, data, origin: str) -> None:
    """A searched patch size must divide the image size; where image_size is not fixed that is the data's,
    known only now (`patch_size: {choice: [4, 8]}` on Fashion-MNIST's 28 px failed each trial that drew 8)."""
    dist = space.search.get("patch_size")
    if dist is None or space.trial_config({}).image_size is not None:
        return  # (a fixed image_size: the space's own checks compared each value with it)
    values = dist.choices if dist.kind == "choice" else range(int(dist.low), int(dist.high) + 1) \
        if dist.high - dist.low <= 1000 else ()
    bad = [v for v in values if v is not None and data.image_size % v]
    if bad:
        from .space import listed

        raise SpaceError(f"{origin}: search.patch_size: {dist.describe()} draws {listed(bad, 6)}, which "
                         f"{'do' if len(bad) > 1 else 'does'} not divide this "
                         f"data's image size, {data.image_size} px (image_size is not fixed): every trial that drew "
                         f"one would fail; fix image_size, or search patch sizes that divide {data.image_size}")


def _check_linformer_k(space, data, origin: str) -> None:
    """Linformer projects a block's tokens to linformer_k of them, so k must be below the token count, which
    the image size, patch size and model give: a searched k beyond it failed each trial that drew it."""
    dist = space.search.get("linformer_k")
    if dist is None or any(key in space.search for key in ("model", "patch_size", "stem")):
        return  # (a searched patch size or model changes the count: trials whose k does not fit say why)
    largest = max((v for v in dist.choices if v is not None), default=None) if dist.kind == "choice" else dist.high
    if largest is None:
        return
    from .model import build_model

    try:  # the model as the trials build it, without Linformer's projections: its tokens
        model = build_model(space.trial_config({"attention": "full", "linformer_k": None}), data.channels,
                            data.image_size, data.num_classes)
    except ConfigError:
        return  # (the probe says why that config builds nothing)
    tokens = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if tokens is None:
        return
    tokens += model.num_prefix_tokens
    if largest >= tokens:
        raise SpaceError(f"{origin}: search.linformer_k: {dist.describe()} reaches {largest}, but this data and "
                         f"model make {tokens} tokens (the patches and the class token), and linformer_k must be "
                         f"below them: every trial that drew {tokens} or more would fail; search at most "
                         f"{tokens - 1}")


def preload(*modules: str) -> None:
    """Import `modules` on a daemon thread while the main thread waits (on Ray's start, on the trials),
    so that the code needing them later does not wait for the import. A failing import is left for the
    main thread's own import to report."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (re-raised where the module is really imported)
                pass

    threading.Thread(target=run, daemon=True).start()


def load_space_arg(name: str, data: str | None):
    """A new search's space, with --data, and its relative paths made absolute (see `absolute_paths`)."""
    from .config import PATH_KEYS, absolute_paths
    from .space import load_space, parse_space

    space = load_space(name)
    space = space.with_data(data) if data else space
    fixed = space.source.get("fixed") or {}
    absolute = absolute_paths(fixed, os.getcwd())
    # a searched choice of teachers (or init_from) too: best_config.yaml named the best trial's `results/teach`
    # as written, which `train --config` from another folder did not find (or found another teacher there)
    search = dict(space.source.get("search") or {})
    for key in PATH_KEYS:
        spec = search.get(key)
        if isinstance(spec, dict) and isinstance(spec.get("choice"), list):
            search[key] = {**spec, "choice": [absolute_paths({key: v}, os.getcwd())[key] for v in spec["choice"]]}
    if absolute == fixed and search == (space.source.get("search") or {}):
        return space
    return parse_space({**space.source, "fixed": absolute, "search": search}, origin=space.name)


def _existing(exp_dir: Path, flag: str):
    """An experiment folder given to --resume/--extend: its space and runtime flags."""
    from .search import RAY_DIR, RUN_FILE, SPACE_FILE
    from .space import experiment_space

    if not (exp_dir / SPACE_FILE).is_file() or not (exp_dir / RUN_FILE).is_file():
        from .files import folders_in

        raise UserError(f"{flag} {str(exp_dir)!r} is not a vitsearch experiment folder "
                        f"(no {SPACE_FILE} and {RUN_FILE} in it)" + folders_in(exp_dir))
    space = experiment_space(exp_dir, flag)
    run = json.loads((exp_dir / RUN_FILE).read_text())
    if flag == "--extend" and not (exp_dir / "trials.parquet").is_file():
        from .figures import unfinished

        raise UserError(f"--extend {unfinished(exp_dir, 'trials.parquet')}")  # still running, or stopped: --resume
    if flag == "--extend" and "finished" in run and run["finished"] != run.get("ray_dir", RAY_DIR):
        # an extension that was stopped: a new one went on beside it, and its finished trials never reached
        # the reports (its trials that were running stayed RUNNING in the study)
        from .cli import command, on_cluster, shell
        from .files import search_running

        pid = search_running(exp_dir)
        raise UserError(f"--extend {str(exp_dir)!r}: its last --extend (of {run.get('extension_trials')} trials) "
                        + (f"is still running (pid {pid}); wait for it to end, then --extend" if pid is not None else
                           f"was stopped before it finished; continue it with: {command()} search --resume "
                           f"{shell(exp_dir)}{on_cluster(run.get('address'))}, then --extend again"))
    return exp_dir, space, run


def _largest(space, image_size: int) -> dict:
    """The space's most expensive point for a probe: its largest batch, and its largest model where the
    model's shape is searched (`_model_ends`)."""
    return {**_largest_batch(space), **_model_ends(space, image_size)[0]}


def _largest_batch(space) -> dict:
    dist = space.search.get("batch_size")
    return {} if dist is None else {"batch_size": max(dist.choices) if dist.kind == "choice" else dist.high}


# searched keys that set a trial's cost per image, and which end of their values costs the most
COST_KEYS = {"depth": max, "embed_dim": max, "patch_size": min}


def _model_ends(space, image_size: int | None) -> tuple[dict, dict]:
    """The most and the least expensive model shapes the trials can draw, where model, depth, embed_dim,
    patch_size or stem is searched (empty dicts where none is). The probe timed TrainConfig's shape alone: with
    `depth: {int: [1, 200]}` on vit_micro it estimated 2 s for a search that took 72 s. An end that builds no
    model (a width no searched head count divides, a patch size that does not divide `image_size`) is left
    out, and its key keeps TrainConfig's value."""
    from .config import ConfigError
    from .space import shape_builds

    ends: tuple[dict, dict] = ({}, {})
    if "model" in space.search:  # the largest and the smallest of the searched models
        ranked = _models_by_size(space, image_size)
        if len(ranked) > 1:
            ends[0]["model"], ends[1]["model"] = ranked[-1], ranked[0]
    for key, costly in COST_KEYS.items():
        dist = space.search.get(key)
        if dist is None:
            continue
        values = sorted(v for v in dist.choices if v is not None) if dist.kind == "choice" else \
            [int(dist.low), int(dist.high)]
        if key == "patch_size" and image_size:
            values = [v for v in values if image_size % v == 0]
        if values:
            ends[0][key], ends[1][key] = (values[-1], values[0]) if costly is max else (values[0], values[-1])
    stem = space.search.get("stem")  # the conv stem costs more per image (vit_micro, 16 px: 1,950 against 2,500)
    if stem is not None and {"conv", "patch"} <= set(stem.choices):
        ends[0]["stem"], ends[1]["stem"] = "conv", "patch"
    heads = space.search.get("num_heads")  # the most heads that divide a searched width end, largest first
    head_counts = [None] if heads is None else range(int(heads.high), int(heads.low) - 1, -1) \
        if heads.kind != "choice" else sorted((v for v in heads.choices if v is not None), reverse=True)
    built = []
    for end in ends:
        if "embed_dim" in end:
            model = end.get("model", space.trial_config({}).model)
            fit = next((h for h in head_counts if shape_builds((h, end["embed_dim"], model))), 0)
            if fit == 0:
                del end["embed_dim"]
            elif fit is not None:
                end["num_heads"] = fit
        if end.get("stem") == "conv":
            try:
                space.trial_config(end)
            except ConfigError:  # (a patch size that is no power of two: only the patchify stem builds there)
                del end["stem"]
        try:
            space.trial_config(end)
        except ConfigError:
            end = {}
        built.append(end)
    return built[0], built[1]


def _models_by_size(space, image_size: int | None) -> list[str]:
    """The searched `model` choices that build with the space's fixed values, fewest parameters first: the
    probe timed TrainConfig's model alone, and `model: {choice: [vit_micro, vit_small]}` estimated 11 s for a
    search whose trials took 24 s. Each is built once on the CPU, without pretrained weights (parameters cost
    about alike per image: the patch size, and so the tokens, is the same for every family)."""
    from .config import ConfigError
    from .model import build_model

    sizes = {}
    for name in space.search["model"].choices:
        try:
            cfg = space.trial_config({"model": name}).replace(init_from=None, freeze_blocks=0, teacher=None)
            sizes[name] = sum(p.numel() for p in build_model(cfg, 3, image_size or 224, 10).parameters())
        except ConfigError:
            continue  # (a model that builds no trial: the space's checks and the trials say why)
    return sorted(sizes, key=sizes.get)


def _probe_points(space, data, device: str) -> list[dict]:
    """What the cost probe measures: the space's largest batch and, where the batch is searched, also its
    smallest, which trains fewer images per second (quickstart on the CPU: 1,850 at 128, 1,440 at 32) and
    takes as many trials. On a CPU a probe steps one micro-batch at most, so two batches that both fill
    one are measured once. Where the model's shape is searched, each batch is timed with the largest model
    and the smallest (`_model_ends`), largest first."""
    from .train import probe_batch, resolve_device

    costly, cheap = _model_ends(space, data.image_size)
    models = [costly, cheap] if costly != cheap else [costly]
    largest = _largest_batch(space)
    dist = space.search.get("batch_size")
    batches = [largest]
    if dist is not None:
        smallest = {**largest, "batch_size": min(dist.choices) if dist.kind == "choice" else dist.low}
        dev, n = resolve_device(device), len(data.train_y)
        if probe_batch(space.trial_config(smallest), n, dev) != probe_batch(space.trial_config(largest), n, dev):
            batches.append(smallest)
    return [{**batch, **model} for batch in batches for model in models]


def _probe_label(space, point: dict) -> str:
    """How the plan names a probed point: its batch, and its model's shape where that is searched."""
    cfg = space.trial_config(point)
    shape = [f"{k} {point[k]}" for k in ("model", *COST_KEYS, "stem") if k in point]
    return f"batch {cfg.batch_size}" + (f" ({', '.join(shape)})" if shape else "")


class _Probe:
    """The throughput probe in a background thread: a few real steps of each of `_probe_points`.
    Its value: (what was probed, training images/s) per point.

    The driver's other threads (the import of Ray Tune, `ray.init`) share its GIL, and a step that waits on
    them reads slow even by its own thread's CPU time: a busy main thread cut the quickstart's batch-128
    probe from ~2,000 to ~650-840 images/s, and in searches it read 1,067-1,553 while the trials then trained
    at ~1,920 (the plan for Fashion-MNIST said 44-50 min for ~28 min of trials). So where the first round of
    the points was quick (`SECOND_PROBE_WITHIN_S`), they are timed again until the main thread asks for the
    result (Ray has started by then), and each keeps its fastest reading (of these rounds, the fastest step's):
    waiting only slows a step."""

    def __init__(self, space, data, device: str):
        import threading

        self.value: list[tuple[str, float]] | None = None
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.asked = threading.Event()  # the main thread waits for the result: no more rounds
        self.rounds = 0  # rounds of the points timed (each keeps its fastest)
        self.thread = threading.Thread(target=self._run, args=(space, data, device), daemon=True)
        self.thread.start()

    def _run(self, space, data, device: str) -> None:
        try:  # a search stopped before the probe is done exits while this thread may still import torch
            import torch

            from .train import measure_throughput
        except BaseException as exc:
            self.error = exc
            return
        started = time.time()
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(space.cpu)))
        try:
            self.value = []
            points = []
            for point in _probe_points(space, data, device):
                if self.stopping.is_set() or (self.value and time.time() - started > SECOND_PROBE_WITHIN_S):
                    break  # a slow first probe (ViT-S on a CPU: ~30 s) is what the estimate gets
                cfg = space.trial_config(point)
                points.append(cfg)
                self.value.append((_probe_label(space, point), measure_throughput(cfg, data, device,
                                                                                  stop=self.stopping.is_set)))
            quick = time.time() - started < SECOND_PROBE_WITHIN_S  # (one round of a larger model: no more)
            self.rounds = 1
            while quick and not (self.asked.is_set() or self.stopping.is_set()):
                self.rounds += 1
                for i, cfg in enumerate(points):  # (a round cut short by the main thread's call reads 0)
                    try:
                        rate = measure_throughput(cfg, data, device, fastest=True,
                                                  stop=lambda: self.asked.is_set() or self.stopping.is_set())
                    except Exception:  # noqa: BLE001 (the first round's readings stand)
                        quick = False
                        break
                    self.value[i] = (self.value[i][0], max(self.value[i][1], rate))
        except BaseException as exc:  # re-raised in the main thread (a bad teacher path is a UserError)
            self.error = exc
        finally:
            torch.set_num_threads(threads)

    def cancel(self, wait_s: float = 10.0) -> None:
        """End the probe after the step under way, and wait for that up to `wait_s`: an interpreter that
        tears down while this thread is inside torch can abort ("terminate called ..."). One step of a large
        model can take longer on a CPU (ViT-S at 64 px: ~30 s); the command line then exits without the
        teardown (`cli.run`)."""
        self.stopping.set()
        self.thread.join(wait_s)

    def result(self) -> list[tuple[str, float]]:
        self.asked.set()
        self.thread.join(SAY_PROBING_AFTER_S)
        if self.thread.is_alive():  # a large model on a CPU: say what the wait is for
            console.print("probe: timing a few training steps of each probed config ...", highlight=False)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def _packs(space, device: str) -> bool:
    """Whether this search probes a GPU packing first (`gpu: auto` on a GPU). Needs only torch, which
    the data already imported, so that the probe thread can import the trainer while Ray starts."""
    import torch

    return space.gpu_auto and space.gpu > 0 and not device.startswith("cpu") and torch.cuda.is_available()


def _packing(space, data, device: str, earlier: dict | None):
    """With `gpu: auto` on a GPU: trials per GPU from the packing probe (or, resuming, the earlier choice).
    Returns the space with its per-trial GPU share and the packing as recorded in run.json."""
    from .packing import probe

    if not _packs(space, device):
        return space, earlier
    if earlier is None:
        console.print("packing probe: how many trials share one GPU ...", highlight=False)
        found = probe(space.trial_config(_largest(space, data.image_size)), data, device)
        earlier = found.to_dict()
        console.print(f"packing: {found.describe()}", highlight=False)
    return replace(space, gpu=1.0 / earlier["trials_per_gpu"]), earlier


def _print_header(space, data) -> None:
    """The plan's first line, as soon as the data is loaded (Ray's start and the probe come after it:
    ViT-S's probe on a CPU takes about a minute)."""
    from .config import warmup_note
    from .data import subset_note, untrained_note
    from .space import shape_clash_note

    console.print(f"[bold]search[/] {space.name}: {count(space.num_samples, 'trial')} x <= {space.max_epochs} epochs, "
                  f"ASHA grace {space.grace_period} / factor {space.reduction_factor}, metric {space.metric} "
                  f"({space.mode}); data {data.name}: {len(data.train_y)} train / {len(data.val_y)} val",
                  highlight=False, soft_wrap=True)
    # num_samples 1: the one trial is the recommended defaults; nothing was drawn, and nothing said so
    alone = None if space.num_samples > 1 else "note: num_samples 1 runs only the recommended defaults (every " \
        f"search's first trial): nothing is drawn from search: ({', '.join(space.search)}); --extend adds drawn trials"
    base = space.trial_config({})  # a fixed warmup (or the default's) that fills every trial's budget
    warmup = None if "warmup_epochs" in space.search else warmup_note(base, "the budget, scheduler.max_epochs",
                                                                       "every trial's")
    for note in (alone, subset_note(base.data_subset, data), untrained_note(data), warmup, shape_clash_note(space)):
        if note:
            console.print(note, highlight=False, soft_wrap=True)


def _half_on_cpu(space, device: str, args) -> str | None:
    """The note for a fixed or searched half precision whose trials run on this machine's CPU (on a cluster
    they may run where the GPUs are)."""
    from .train import half_on_cpu_note, resolve_device

    if args.address:
        return None
    dist = space.search.get("precision")
    asked = [c for c in dist.choices if c in ("fp16", "bf16")] if dist is not None and dist.kind == "choice" \
        else [space.trial_config({}).precision]
    return next((n for p in asked if (n := half_on_cpu_note(p, resolve_device(device)))), None)


def _print_plan(space, data, device: str, probes: list[tuple[str, float]], note: str | None = None) -> float:
    """The plan and an honest cost estimate from `probes`, (what was probed, images/s) of the probed configs:
    an image costs the mean of their times per image. Returns the trial-epochs expected."""
    from .search import expected_trial_epochs

    if note:
        console.print(note, highlight=False, soft_wrap=True)
    slots = _slots(space)
    epochs, epoch_times = expected_trial_epochs(space, slots)
    ips = len(probes) / sum(1.0 / rate for _, rate in probes)
    cpus = _ray_cpus()
    crowd = _crowding(space, slots, cpus)
    epoch_s = (len(data.train_y) + len(data.val_y) / 3) / ips * crowd
    everything = math.ceil(space.num_samples / slots) * space.max_epochs * epoch_s  # no trial stopped early
    labelled = len(probes) > 1 or any(k in space.search for k in ("model", *COST_KEYS))  # or the largest alone
    speeds = " and ".join(f"{rate:,.0f} at {label}" for label, rate in probes) if labelled else f"{probes[0][1]:,.0f}"
    console.print(f"probe: {speeds} training images/s per trial ({count(max(1, int(space.cpu)), 'CPU thread')}, "
                  f"device {device}); ~{epochs:,.0f} trial-epochs expected with ASHA, {slots} at a time -> "
                  f"estimated {duration(epoch_times * epoch_s)} (all {space.num_samples * space.max_epochs:,} "
                  f"trial-epochs: {duration(everything)})"
                  + (f"; {slots} trials of {count(max(1, int(space.cpu)), 'thread')} share {cpus:g} CPUs, so each "
                     f"runs at ~1/{crowd:.3g} of the probed speed" if crowd > 1 else ""),
                  highlight=False, soft_wrap=True)
    return epochs


def _ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else float(_cpus())


def _crowding(space, slots: int, cpus: float) -> float:
    """How many times over the CPU trials' threads fill the CPUs: `resources.cpu: 0.5` on 2 cores runs 4
    one-thread trials at once, each at about half the speed the probe measured alone (the estimate
    assumed the probed speed). 1 where the threads fit, and for GPU trials, whose GPU sets the pace."""
    if space.gpu or cpus <= 0:
        return 1.0
    return max(1.0, slots * max(1, int(space.cpu)) / cpus)


def _slots(space) -> int:
    """Trials at once: what the cluster's resources allow per trial, capped by max_concurrent."""
    import ray

    resources = ray.available_resources() if ray.is_initialized() else {"CPU": _cpus()}
    slots = max(1, int(resources.get("CPU", 0) // space.cpu)) if space.cpu else space.num_samples
    if space.gpu:
        slots = min(slots, max(1, int(resources.get("GPU", 0) / space.gpu + 1e-9)))
    if space.max_concurrent:
        slots = min(slots, space.max_concurrent)
    return min(slots, space.num_samples)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_and_report(space, exp_dir: Path, data, device: str, args, storage, ray_dir: str,
                    expected_epochs: float) -> int:
    from .search import SEARCH_STARTED

    t0, counted = time.time(), []

    def count_time(finished: str | None = None) -> list[float]:  # once per run, however it ends
        if not counted:
            counted.append(_add_run_time(exp_dir, time.time() - t0, finished))
        return counted[0]

    try:
        return _after_search(space, exp_dir, data, device, args, storage, ray_dir, expected_epochs, count_time)
    except KeyboardInterrupt:  # a second Ctrl-C while Tune stops, or one while Ray stops after it: this run's
        if SEARCH_STARTED:     # time counts all the same (it was lost where the stop came after Tune returned)
            with contextlib.suppress(OSError, UserError, ValueError):
                count_time()
        raise


def _after_search(space, exp_dir: Path, data, device: str, args, storage, ray_dir: str, expected_epochs: float,
                  count_time) -> int:
    import optuna
    import pandas as pd

    from .figures import write_html_report
    from .report import (
        TrialOutcome,
        best_val_acc,
        chance_note,
        comparison_line,
        error_line,
        summary_table,
        val_majority,
        write_reports,
    )
    from .search import (
        DATA_UNREADABLE,
        DISK_FULL,
        RAY_DIR,
        cut_short_state,
        disk_full,
        ended_trials,
        run_search,
        stop_exit_code,
        study_name,
        study_storage,
    )

    try:
        with LiveView(space, expected_epochs, _slots(space)) as live:
            results = run_search(space, exp_dir, data=data, device=device, address=args.address, storage=storage,
                                 verbose=args.verbose, resume=bool(args.resume), live=live, ray_dir=ray_dir,
                                 with_defaults=ray_dir == RAY_DIR)
    except Exception as exc:  # the driver's own write (the study, epochs.jsonl) found its device full, or
        line = disk_full(exc)  # Tune failed to read back what a full device cut short (an empty error file)
        if line is None and not DISK_FULL:
            raise
        DISK_FULL[:] = DISK_FULL or [line]
        results = None
    import ray

    if DISK_FULL:  # a trial's write, or the driver's: every later trial would fail the same way
        ray.shutdown()
        with contextlib.suppress(OSError, UserError):  # (run.json: its device may be the full one)
            count_time()
        broken = cut_short_state(storage or str(exp_dir.resolve()), ray_dir)
        err_console.print(f"error: a device the search writes to is full ({escape(DISK_FULL[0])}): the search stopped"
                          + ("; the finished trials and epochs are kept. Free some space, then continue with: "
                             f"{command()} search --resume {escape(shell(exp_dir))}{on_cluster(args.address)}"
                             if broken is None else
                             f", and Ray's saved state was cut short ({escape(broken)}): it cannot be resumed. Its "
                             f"trials are in study.db and epochs.jsonl; free some space and search again"),
                          highlight=False, soft_wrap=True)
        return 1
    if DATA_UNREADABLE:  # a trial could not read a file of the data: every other one would fail on it too
        ray.shutdown()
        count_time()
        err_console.print(f"error: a trial could not read the data ({escape(DATA_UNREADABLE[0])}): the search stopped, "
                          "since every trial would fail on it; the finished trials and epochs are kept. Put the file "
                          "back (on a cluster: a streamed folder must be readable at the same path on every node), "
                          f"then continue with: {command()} search --resume {escape(shell(exp_dir))}"
                          f"{on_cluster(args.address)}", highlight=False, soft_wrap=True)
        return 1
    ended = ended_trials(results, exp_dir)
    if ended < max(len(results), space.num_samples):
        # Ctrl-C (SIGINT): Tune stopped the running trials and saved its state. Every reported epoch is in
        # epochs.jsonl, the study and the trials' checkpoints are kept; the reports wait for the whole search.
        ray.shutdown()
        count_time()
        console.print(f"interrupted: {ended} of {space.num_samples} trials finished; nothing is lost. Continue "
                      f"with: {command()} search --resume {escape(shell(exp_dir))}{on_cluster(args.address)}",
                      highlight=False, soft_wrap=True)
        return stop_exit_code()
    # Ray is done: stop it (a second or two of waiting on its processes) while the reports are written.
    import threading

    stopping = threading.Thread(target=ray.shutdown)
    stopping.start()
    parquet_written, code = False, 0  # from then on `python main.py report` can draw the rest
    try:
        outcomes = []
        for r in results:
            trial_id = Path(r.path).name
            error = error_line(r.error) if r.error else None
            outcomes.append(TrialOutcome(trial_id, dict(r.config), dict(r.metrics or {}), error))
        study = optuna.load_study(study_name=study_name(exp_dir), storage=study_storage(exp_dir))
        numbers = {t.user_attrs.get("ray_trial_id"): t.number for t in study.trials}
        numbers.update({t.user_attrs["checkpoint_of"]: t.number for t in study.trials
                        if "checkpoint_of" in t.user_attrs})
        previous = pd.read_parquet(exp_dir / "trials.parquet") if ray_dir != RAY_DIR else None
        trials, epochs = write_reports(exp_dir, space, outcomes, numbers, previous)
        parquet_written = True
        walls = count_time(finished=ray_dir)
        report_path = write_html_report(exp_dir)
        console.print(summary_table(trials, space, width=console.width))
        console.print(comparison_line(trials, space), highlight=False)
        took = f"{sum(walls):.0f} s" + (f" over {len(walls)} runs (this one: {walls[-1]:.0f} s)" if len(walls) > 1
                                        else "")
        console.print(f"{count(len(trials), 'trial')}, {count(len(epochs), 'trial-epoch')} in {took}; wrote "
                      f"{exp_dir}/trials.parquet, epochs.parquet, {report_path.name}" +
                      (", best_config.yaml" if (exp_dir / "best_config.yaml").is_file() else "") +
                      f"; Optuna study: {study_storage(exp_dir)} (name {study.study_name!r})", highlight=False,
                      soft_wrap=True)
        if (note := chance_note(best_val_acc(trials), *val_majority(data))) is not None:
            console.print(note, highlight=False, soft_wrap=True)
        ended = set(trials["status"])
        if len(trials) and ended <= {"failed", "diverged"}:  # nothing trained to the end: a script must see it
            how = " or ".join(sorted(ended, reverse=True))  # (all diverged exited 0, with no best_config.yaml)
            err_console.print(f"error: every trial {how} ({count(len(trials), 'trial')}): the search found nothing; "
                              "each one's reason is in trials.parquet and report.html", highlight=False, soft_wrap=True)
            code = 1
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C during the reports: every trial is done and recorded (the
        if parquet_written:      # resume writes the Parquet files; _run_and_report counts this run's time)
            args.parquet_written = True
            console.print(f"interrupted while drawing the reports; the Parquet files are written, and "
                          f"`{command()} report {escape(shell(exp_dir))}` draws the rest", highlight=False,
                          soft_wrap=True)
        raise
    finally:
        stopping.join()  # Ray is down before the process exits, however it exits
    return code


def _add_run_time(exp_dir: Path, seconds: float, finished: str | None = None) -> list[float]:
    """Add this run's search time to run.json: `run_walls` lists every run of the search (the first, each
    resume, each extension) that ended or was stopped by Ctrl-C or SIGTERM, and `wall_s` is their sum.
    `finished` (a run whose trials all ended and whose Parquet files are written) names its Ray folder, so
    that a later --resume knows there is nothing left to run."""
    from .files import write_bytes

    run_file = exp_dir / "run.json"
    run = json.loads(run_file.read_text())
    walls = [*run.get("run_walls", [run["wall_s"]] if "wall_s" in run else []), round(seconds, 1)]
    ended = {"finished": finished} if finished else {}
    write_bytes(json.dumps({**run, "run_walls": walls, "wall_s": round(sum(walls), 1), **ended}).encode(), run_file)
    return walls


def _show_finished(space, exp_dir: Path, run: dict) -> int:
    """--resume of a search that has finished: its summary, without starting Ray or training anything (the
    report is drawn again only where a stop during the drawing left it missing)."""
    import pandas as pd

    from .report import comparison_line, summary_table

    trials = pd.read_parquet(exp_dir / "trials.parquet")
    epochs = pd.read_parquet(exp_dir / "epochs.parquet", columns=["epoch"])
    if not (exp_dir / "report.html").is_file():
        from .figures import write_html_report

        write_html_report(exp_dir)
    console.print(summary_table(trials, space, width=console.width))
    console.print(comparison_line(trials, space), highlight=False)
    console.print(f"the search has finished: nothing to resume. {count(len(trials), 'trial')}, "
                  f"{count(len(epochs), 'trial-epoch')} "
                  f"in {run.get('wall_s', 0):.0f} s; its reports are in {exp_dir} (add trials with "
                  f"`{command()} search --extend {escape(shell(exp_dir))} --trials N"
                  f"{on_cluster(run.get('address'))}`)",
                  highlight=False, soft_wrap=True)
    return 0
