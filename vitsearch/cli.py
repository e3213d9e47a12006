"""Command-line front end: `python main.py train|search ...`. Parses, prints, and calls the library.

User errors (`UserError`: bad config, space, data path, results folder) print one line on stderr and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import NonFiniteLossError, UserError


class _Console(Console):
    _PIPE_CLOSED: list[bool] = []  # [True] once a closed stdout or stderr has stopped the command

    def on_broken_pipe(self) -> None:
        """The reader of this console's stream went away (`| head`, a `tee` that was stopped). Rich's own
        handler exits with code 1 from wherever it printed: inside a Tune callback, the search died without
        its reports or a word. Now the command stops as on Ctrl-C (a search keeps every result and can be
        resumed; a train run says how to resume), with exit code 141. Output to stdout goes to stderr from
        there; a closed stderr (`2>&1 | head`) is quiet."""
        import signal

        stream = self.file
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # what is left in the stream's buffer goes nowhere
        os.close(devnull)
        if stream is sys.stdout:
            self.file = sys.stderr
        else:
            self.quiet = True
        if not self._PIPE_CLOSED:
            self._PIPE_CLOSED.append(True)
            err_console.print("stdout was closed (the program reading it ended): stopping as on Ctrl-C",
                              highlight=False, soft_wrap=True)
            from .search import stop_as_on_ctrl_c  # imports no Ray

            stop_as_on_ctrl_c(signal.SIGPIPE)

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        """Lines of text whole in a log or a pipe: at its 160 columns a note went on over two lines ("... add
        \nimages of them"), as did a fine-tuning's first line; tables keep the width. A terminal wraps as wide
        as it is."""
        if soft_wrap is None and not self.is_terminal and all(isinstance(o, str) for o in objects):
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console = _Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes: whole lines and tables
err_console = _Console(stderr=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit code 2
        err_console.print(f"[red]error:[/] {escape(message)} (see `{self.prog} --help`)", highlight=False,
                          soft_wrap=True)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog(), description="Hyperparameter search for Vision Transformer training.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = sub.add_parser("train", help="train one config with the shared trainer")
    tr.add_argument("--config", help="TrainConfig YAML (for example a search's best_config.yaml)")
    tr.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config keys: --set lr=3e-4 epochs=50 (or --set lr=3e-4 --set epochs=50)")
    tr.add_argument("--data", help="dataset spec, as for search and reproduce (the same as --set data=SPEC)")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    tr.add_argument("--out", help="parent folder of the run folder (default: results)")
    tr.add_argument("--name", help="run folder name (default: train-<time>)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")

    from .search_cli import add_search_parser

    add_search_parser(sub)
    rp = sub.add_parser("report", help="write report.html and figures for a finished search")
    rp.add_argument("experiment", help="results/<experiment> folder")

    re_ = sub.add_parser("reproduce", help="train the recommended defaults (and a search's best) over N seeds")
    re_.add_argument("--from", dest="source", metavar="EXPERIMENT_DIR", help="also train this search's best config")
    re_.add_argument("--data", help="dataset spec for every run (default: the experiment's, or digits)")
    re_.add_argument("--seeds", type=int, help="seeds per config (default 3)")
    re_.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    re_.add_argument("--out", help="parent folder of the output (without --from; default: results)")
    re_.add_argument("--resume", metavar="DIR", help="continue an interrupted reproduce (its --from experiment or "
                     "its reproduce-<time> folder)")
    return parser


def duration(seconds: float) -> str:
    """A time for people: 45 s, 12 min, 3.5 h, 61 days (ViT-S on a CPU: it said 1468.5 h)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def _prog() -> str:
    """How the user called it: `main.py`, the installed `vitsearch`, or `python -m vitsearch`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return {"vitsearch": "vitsearch", "__main__.py": "python -m vitsearch"}.get(name, "main.py")


def count(n: int, noun: str) -> str:
    """'1 trial', '16 trials'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def command() -> str:
    """The command a printed hint gives to run again: `python main.py`, `vitsearch` or `python -m vitsearch`."""
    prog = _prog()
    return f"python {prog}" if prog == "main.py" else prog


def shell(*words) -> str:
    """Paths and values as a printed command takes them, quoted for the shell where needed: a path with a
    space (`~/My Drive/results`) was printed bare, and the command as printed failed."""
    import shlex

    return " ".join(shlex.quote(str(word)) for word in words)


def on_cluster(address: str | None) -> str:
    """What a printed `search --resume` command adds for a search that ran on a cluster: without it, the
    resume would run on a Ray instance of this machine alone."""
    return f" --address {shell(address)}" if address else ""


def run() -> None:
    """`python main.py ...` and the installed `vitsearch ...`: `main`, then a quick exit."""
    from .search import stop_on_sigterm

    # `kill PID` (a batch system's time limit, `timeout`) stops every command as Ctrl-C does: a train run
    # before its first epoch leaves nothing, after it says how to resume. A search puts it back after Ray starts.
    stop_on_sigterm()
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", bool)():  # (a stop while Ray was imported: not yet)
        try:  # what the normal exit's atexit hook would do: stop the local Ray instance
            ray.shutdown()
        except BaseException:  # noqa: BLE001 (a second Ctrl-C, a dead raylet: exit all the same)
            pass
    # Everything is written and closed, and no Ray instance is left: skip the interpreter's teardown of
    # torch and Ray's core worker (~1.6 s after a search), which can also abort ("terminate called ...")
    # where a thread is still inside torch (a throughput probe stopped by Ctrl-C while Ray started).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{_pairs_hint(args.command, extra)}")
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        from .search_cli import cmd_search

        return cmd_search(args)
    except UserError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return _stop_code()


def _pairs_hint(command: str, extra: list[str]) -> str:
    """`train --set lr=1e-3 --out x epochs=5` left `epochs=5` to no option: say where KEY=VALUE goes."""
    if not all(re.match(r"[A-Za-z_]\w*=", token) for token in extra):
        return ""
    if command == "train":
        return f"; KEY=VALUE pairs go right after --set, before any other option (--set {' '.join(extra)})"
    return f"; {command} takes no KEY=VALUE pairs: TrainConfig values go in the space file's fixed: section" \
        if command == "search" else f"; {command} takes no KEY=VALUE pairs"


def _stop_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (every command stops on it as on Ctrl-C)."""
    from .search import stop_exit_code  # imports no Ray

    return stop_exit_code()


def _yaml_value(value) -> str:
    """`value` as `--set` takes it (YAML): 3, 0.0003, null, true, imagefolder:/data."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _start_from(cfg) -> str:
    """Where the weights start, for a run's first line: it named the teacher of a distillation, but not the
    init_from weights a fine-tuning starts from, nor what of them is frozen or decayed."""
    from .config import model_depth

    if not cfg.init_from:
        return ""
    depth = model_depth(cfg.model, cfg.depth)
    frozen = cfg.freeze_blocks > 0 and "the embeddings and " + (
        "every block" if depth and cfg.freeze_blocks >= depth else f"the first {count(cfg.freeze_blocks, 'block')}"
    ) + " frozen"
    decay = cfg.layer_decay is not None and cfg.layer_decay < 1 and f"layer_decay {cfg.layer_decay:g}"
    told = "; ".join(part for part in (frozen, decay) if part)
    return f", weights from {cfg.init_from}" + (f" ({told})" if told else "")


def cmd_train(args: argparse.Namespace) -> int:
    import pandas as pd

    from .config import (
        TrainConfig,
        absolute_paths,
        auto_patch_size,
        changed_keys,
        idle_keys_note,
        load_config,
        warmup_note,
    )
    from .data import load_data, subset_note, untrained_note
    from .files import (
        check_folder,
        check_name,
        claim_folder,
        free_folder,
        new_folders,
        take_back,
        write_parquet,
        write_yaml,
    )
    from .train import CHECKPOINT_NAME, half_on_cpu_note, resolve_device, train

    resolve_device(args.device)  # a GPU this machine does not have: one line before anything loads or prints
    if args.data is not None:  # `search --data` and `reproduce --data` have it; train said "unrecognized arguments"
        if any(item.partition("=")[0].strip() == "data" for item in args.set):
            raise UserError("--data and --set data=... both give the data; give it once")
        args.set = [*args.set, "data=" + json.dumps(args.data)]  # a YAML string as given (a '#' in a path stays)
    done = None  # a resumed run's epochs so far
    if args.resume:
        for flag in ("name", "out"):  # --out was ignored: the run went on in RUN_DIR
            if getattr(args, flag):
                raise UserError(f"--{flag} goes with a new run; --resume continues in RUN_DIR")
        run_dir = Path(args.resume)
        if not (run_dir / CHECKPOINT_NAME).is_file():
            from .files import folders_in

            raise UserError(f"--resume {args.resume!r} is not a train run folder (no {CHECKPOINT_NAME} in it)"
                            + folders_in(run_dir, ("config.yaml", CHECKPOINT_NAME), "train run folder"))
        cfg = load_config(args.config or run_dir / "config.yaml", args.set)
        if args.config or args.set:  # a run goes on only with its own config (its schedule, its checkpoint)
            own = load_config(run_dir / "config.yaml").to_dict()
            diffs = changed_keys(cfg, own)
            if diffs:
                changes = shell(*(f"{k}={_yaml_value(getattr(cfg, k))}" for k in diffs))
                raise UserError(f"--resume continues {str(run_dir)!r} with its own config: {diffs[0]!r} is "
                                f"{own.get(diffs[0])!r} there and {getattr(cfg, diffs[0])!r} here; to train it "
                                f"differently, start a new run: {command()} train --config "
                                f"{shell(run_dir / 'config.yaml')} --set {changes}")
        done = pd.read_parquet(run_dir / "epochs.parquet") if (run_dir / "epochs.parquet").is_file() else None
        if done is not None and len(done) and int(done["epoch"].iloc[-1]) >= cfg.epochs:
            # its checkpoint is written before each epoch's row: the run is complete, and nothing is rewritten
            best = done.loc[done["val_acc"].idxmax()]
            every = ("all " if cfg.epochs > 1 else "") + count(cfg.epochs, "epoch")
            console.print(f"run {run_dir} has finished {every}: nothing to resume (final val_acc "
                          f"{done['val_acc'].iloc[-1]:.4f}, best {best['val_acc']:.4f} at epoch {int(best['epoch'])})",
                          highlight=False, soft_wrap=True)
            return 0
        check_folder(run_dir, "--resume")  # a folder it cannot write (read-only): one line before it trains
    else:
        cfg = TrainConfig.from_dict(absolute_paths(load_config(args.config, args.set).to_dict(), os.getcwd()))
        check_name(args.name)
        args.out = args.out or "results"
        base = Path(args.out) / (args.name or time.strftime("train-%Y%m%d-%H%M%S"))
        run_dir = base if args.name else free_folder(base)  # runs launched in the same second: -2, -3, ...
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run folder {str(run_dir)!r} already exists; pick another --name or use --resume")
        check_folder(args.out, "--out")
    data = load_data(cfg)
    made: list[Path] | None = None  # a new run's folder, claimed before it trains, and the folders it made

    def claim(folder: Path) -> None:  # another run started meanwhile may have written its config.yaml
        nonlocal made
        made = new_folders(folder)
        write_yaml(cfg.to_dict(), folder / "config.yaml", exclusive=True)

    if not args.resume:
        run_dir = claim_folder(run_dir, None if args.name else base, claim,
                               f"run folder {str(run_dir)!r} was taken by another run started meanwhile; pick "
                               "another --name")
    console.print(f"[bold]train[/] {cfg.model} on {data.name}: {len(data.train_y)} train / {len(data.val_y)} val "
                  f"images, {data.image_size}px x{data.channels}, {data.num_classes} classes, "
                  + (f"patch {cfg.patch_size or auto_patch_size(data.image_size)}, " if cfg.is_vit else "")
                  + f"batch {cfg.batch_size}, "
                  + (f"lr {cfg.scaled_lr:.3g} ({cfg.lr:g} at {cfg.lr_base_batch}, {cfg.lr_scaling} scaling)"
                     if cfg.lr_scaling != "none" else f"lr {cfg.lr:.3g} (not scaled by the batch)")
                  + (f", {cfg.distill_mode} distillation (weight {cfg.distill_share:g}) from {cfg.teacher}"
                     if cfg.teacher else "") + _start_from(cfg), highlight=False)
    for note in (half_on_cpu_note(cfg.precision, resolve_device(args.device)), subset_note(cfg.data_subset, data),
                 untrained_note(data), idle_keys_note(cfg), warmup_note(cfg)):
        if note:
            console.print(note, highlight=False)
    rows: list[dict] = done.to_dict("records") if done is not None else []

    started, first_epoch = time.time(), (rows[-1]["epoch"] if rows else 0) + 1

    def report(metrics: dict) -> None:
        rows.append(metrics)
        write_parquet(pd.DataFrame(rows), run_dir / "epochs.parquet")
        # the time left at this run's mean time per epoch so far (model build and first-epoch warm-up included)
        left = (cfg.epochs - metrics["epoch"]) * (time.time() - started) / (metrics["epoch"] - first_epoch + 1)
        console.print(f"epoch {metrics['epoch']:>3}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
                      f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}  "
                      f"lr {metrics['lr']:.2e}  grad_norm {metrics['grad_norm']:.3f}  "
                      + (f"cls_norm {metrics['cls_norm']:.2f}  attn_entropy {metrics['attn_entropy_mean']:.3f} (min "
                         f"{metrics['attn_entropy_min']:.3f})  mlp_sparsity {metrics['mlp_sparsity']:.3f}  "
                         if cfg.monitors else "")  # (they went to epochs.parquet alone, unseen while the run went on)
                      + f"{metrics['images_per_s']:.0f} img/s" + (f"  ~{duration(left)} left" if left > 0 else ""),
                      highlight=False)

    try:
        result = train(cfg, report, data=data, device=args.device, checkpoint_dir=run_dir,
                       resume_from=run_dir if args.resume else None)
    except BaseException as exc:
        if made is not None and not rows:  # a new run stopped before its first epoch: it leaves nothing
            take_back(run_dir, ("config.yaml", CHECKPOINT_NAME), made)
        if isinstance(exc, KeyboardInterrupt) and rows:  # each epoch's checkpoint is written before its row
            err_console.print(f"interrupted after epoch {rows[-1]['epoch']} of {cfg.epochs}; continue with: "
                              f"{command()} train --resume {escape(shell(run_dir))}", highlight=False, soft_wrap=True)
            return _stop_code()
        if not isinstance(exc, NonFiniteLossError):
            raise
        err_console.print(f"[red]diverged:[/] {escape(str(exc))}; metrics of earlier epochs are in "
                          f"{escape(str(run_dir))}/epochs.parquet",
                          highlight=False)
        return 1
    rows[:] = result["history"]
    write_parquet(pd.DataFrame(rows), run_dir / "epochs.parquet")
    table = Table(title=f"{run_dir}")
    for col in ("final val_acc", "best val_acc", "best epoch", "final val_loss", "img/s"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['val_acc']:.4f}", f"{result['best_val_acc']:.4f}", str(result["best_epoch"]),
                  f"{result['val_loss']:.4f}", f"{result['images_per_s']:.0f}")
    console.print(table)
    written = ["epochs.parquet", CHECKPOINT_NAME, "config.yaml"]
    from .figures import attention_maps_png
    from .files import write_bytes

    png = attention_maps_png(result["model"], data) if cfg.is_vit else None
    if png is not None:
        write_bytes(png, run_dir / "attention_maps.png")
        written.append("attention_maps.png")
    console.print("wrote " + ", ".join(f"{run_dir}/{name}" for name in written), highlight=False, soft_wrap=True)
    from .report import chance_note, val_majority

    if (note := chance_note(result["best_val_acc"], *val_majority(data), search=False)) is not None:
        console.print(note, highlight=False, soft_wrap=True)
    return 0


PARTIAL = "reproduce.partial.json"  # an unfinished reproduce: what it trains, and the runs finished so far
RUNS_DIR = "reproduce-runs"  # the checkpoint of the run in progress


def cmd_reproduce(args: argparse.Namespace) -> int:
    import json
    import shutil

    from . import reproduce
    from .config import TrainConfig, warmup_note
    from .files import check_folder, claim_folder, new_folders, take_back, write_bytes, write_parquet

    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds is {args.seeds}, but must be >= 1")
    from .train import resolve_device

    resolve_device(args.device)  # a GPU this machine does not have: one line before anything loads or prints
    done: list[dict] = []
    if args.resume:
        given = [flag for flag, value in (("--from", args.source), ("--data", args.data), ("--seeds", args.seeds),
                                          ("--out", args.out)) if value is not None]
        if given:
            raise UserError(f"{given[0]} goes with a new reproduce; --resume continues {args.resume!r} with its own "
                            "configs, data and seeds")
        out_dir = Path(args.resume)
        if not (out_dir / PARTIAL).is_file():
            raise UserError(f"--resume {args.resume!r}: " + (
                "its reproduce has finished (reproduce.parquet): nothing to resume" if
                (out_dir / "reproduce.parquet").is_file() else f"no interrupted reproduce in it (no {PARTIAL})"))
        check_folder(out_dir, "--resume")  # a folder it cannot write (read-only): one line before it trains
        try:
            state = json.loads((out_dir / PARTIAL).read_text())
            configs = {name: TrainConfig.from_dict(cfg) for name, cfg in state["configs"].items()}
            seeds, metric, source, done = int(state["seeds"]), state["metric"], bool(state["from"]), state["runs"]
            searched_on = state.get("searched_on") or next(iter(configs.values())).data  # (older partial files)
            trials, fingerprint = state.get("trials", {}), state.get("fingerprint")  # (older partial files: none)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"--resume {args.resume!r}: {PARTIAL} cannot be read ({exc.__class__.__name__}); "
                            "it was not written by vitsearch's reproduce") from None
    else:
        seeds, metric, source, trials = args.seeds or 3, "val_acc", bool(args.source), {}
        if args.source and args.out:  # it was ignored: the runs went into the experiment's folder
            raise UserError("--out goes with a reproduce of the defaults alone; --from writes into EXPERIMENT_DIR")
        if args.source:
            # compared by the search's metric; the rows name the trials they come from
            defaults, best, metric, trials = reproduce.defaults_for(Path(args.source))
            # the search found nothing better than the defaults: their runs twice would be the same runs
            configs = {"recommended defaults": defaults, **({} if best == defaults else {"search best": best})}
            out_dir = Path(args.source)
            check_folder(out_dir, "--from")
        else:
            configs = {"recommended defaults": TrainConfig()}
            args.out = args.out or "results"
            out_dir = Path(args.out) / time.strftime("reproduce-%Y%m%d-%H%M%S")
            check_folder(args.out, "--out")
        searched_on = next(iter(configs.values())).data  # the search's data (--from), or the defaults'
        if args.data:
            from .config import absolute_paths

            data = absolute_paths({"data": args.data}, os.getcwd())["data"]
            configs = {name: cfg.replace(data=data) for name, cfg in configs.items()}
    from .data import load_data

    data = [load_data(cfg) for cfg in configs.values()][0]  # a missing dataset fails here, before any training
    if args.resume and fingerprint not in (None, data.fingerprint()):  # the finished runs trained on other data
        raise UserError(f"the data of the reproduce in {args.resume!r} changed since it started: {data.name!r} "
                        f"held {fingerprint} then and holds {data.fingerprint()} now, so its finished runs and the "
                        f"rest would be on different data; restore the data, or delete "
                        f"{Path(args.resume) / PARTIAL} to start over")
    for name, cfg in configs.items():  # a config the data cannot take fails now, not after the others' runs
        if cfg.batch_size > len(data.train_y):
            raise UserError(f"{name}: invalid value for 'batch_size': {cfg.batch_size} (must be <= the "
                            f"{len(data.train_y)} training images of {data.name!r})")
    for name, cfg in configs.items():  # a teacher splits the data one way: its runs of other seeds fail, later
        if cfg.teacher:
            from .distill import check_split
            from .model import load_trained

            saved = load_trained(cfg.teacher, "teacher")[0]
            try:  # its data, subset and validation share; then the seed, with the first seed trained
                check_split(cfg.teacher, saved, cfg.replace(seed=saved.seed if saved.seed in range(seeds) else 0))
            except UserError as exc:
                raise UserError(f"{name}: {exc}") from None
            if seeds > 1:
                raise UserError(f"{name}: its teacher {cfg.teacher!r} was trained with seed {saved.seed}, and "
                                f"reproduce trains seeds 0..{seeds - 1}, each with its own train/validation "
                                "split: a run with a teacher must split as the teacher did (else the teacher "
                                "may have trained on its validation images)" + (
                                    "; --seeds 1 trains seed 0 alone" if saved.seed == 0 else ""))
    total_runs = len(configs) * seeds

    def save(rows: list[dict], folder: Path, exclusive: bool = False) -> None:
        state = {"configs": {name: cfg.to_dict() for name, cfg in configs.items()}, "seeds": seeds,
                 "metric": metric, "from": source, "searched_on": searched_on, "trials": trials,
                 "fingerprint": data.fingerprint(), "runs": rows}
        write_bytes(json.dumps(state, indent=1).encode(), folder / PARTIAL, exclusive=exclusive)

    made: list[Path] = []  # folders a new reproduce made, removed again if it stops before its first epoch
    if not args.resume:
        def claim(folder: Path) -> None:
            if (folder / "reproduce.parquet").exists() and not source:  # another one's, finished meanwhile
                raise FileExistsError(folder)
            made[:] = new_folders(folder)
            save([], folder, exclusive=True)

        # --from: the experiment's reproduce that was interrupted (or one running now) is not started over
        out_dir = claim_folder(out_dir, None if source else out_dir, claim,
                               f"--from {str(out_dir)!r} holds a reproduce that has not finished ({PARTIAL}): "
                               f"continue it with: {command()} reproduce --resume {shell(out_dir)} (or delete "
                               f"{out_dir / PARTIAL} to start over)")
    from .files import lock_experiment

    # a second `--resume` while this one runs (a lost SSH session) would train the same runs in the same folder
    lock_experiment(out_dir, ".reproduce.lock", f"a reproduce in {str(out_dir)!r} is still running (pid {{pid}}); "
                    "wait for it to end, or stop it, then --resume")
    work_dir = out_dir / RUNS_DIR
    total = sum(cfg.epochs for cfg in configs.values()) * seeds
    console.print("[bold]reproduce[/] " + " and ".join(
        f"{name} ({cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size})" for name, cfg in configs.items())
        + f", {seeds} seed(s) each, one run at a time, on {data.name}"
        + (f" (not the search's data, {searched_on})" if source and searched_on != data.name else "")
        + f": {len(data.train_y)} train / {len(data.val_y)} val images; {total} epochs in all, the time left shown "
        "after the first"
        + (f"; continuing: {count(len(done), 'run')} of {total_runs} finished before" if args.resume else "")
        + ("; the search's best is the recommended defaults' trial: they are trained once" if source and
           len(configs) == 1 else ""), highlight=False, soft_wrap=True)
    for name, cfg in configs.items():  # (the search's plan said so of its budget; a reproduce trains it again)
        if (note := warmup_note(cfg, f"the runs of {name}", "their")) is not None:
            console.print(note, highlight=False, soft_wrap=True)
    shown = [0.0]
    rows = list(done)

    def on_epoch(name: str, seed: int, metrics: dict, epochs: int, left: float) -> None:
        if time.time() - shown[0] >= 60 and metrics["epoch"] < epochs:  # at the first epoch, then once a minute
            shown[0] = time.time()
            console.print(f"{name:>20}  seed {seed}  epoch {metrics['epoch']}/{epochs}  {metric} "
                          f"{metrics[metric]:.4f}  ~{duration(left)} left in all", highlight=False)

    def progress(row: dict, so_far: list[dict]) -> None:
        rows[:] = so_far
        save(so_far, out_dir)  # before its checkpoint is removed: a stop from here on loses nothing
        result = (f"final {metric} {row[f'final_{metric}']:.4f}" if row["status"] == "finished"
                  else f"diverged: {row['reason']}")
        console.print(f"{row['config']:>20}  seed {row['seed']}  {result}  ({count(row['epochs'], 'epoch')}, "
                      f"{row['wall_s']:.0f} s)", highlight=False, soft_wrap=True)

    try:
        runs = reproduce.run(configs, seeds, args.device, progress=progress, on_epoch=on_epoch, done=done,
                             work_dir=work_dir, trials=trials)
    except BaseException as exc:
        from .train import CHECKPOINT_NAME, peek_history

        try:  # the epochs of the run it stopped, kept in its checkpoint
            kept = [len(peek_history(path)) for path in work_dir.glob(f"*/{CHECKPOINT_NAME}")]
        except Exception:  # noqa: BLE001 (an unreadable checkpoint: the resume says so in one line)
            kept = [0]
        started = bool(kept and kept[0])
        if not rows and not started and not args.resume:  # stopped before its first epoch: it leaves nothing
            shutil.rmtree(work_dir, ignore_errors=True)
            take_back(out_dir, (PARTIAL, ".reproduce.lock"), made)
        elif isinstance(exc, KeyboardInterrupt):
            err_console.print(f"interrupted after {count(len(rows), 'run')} of {total_runs}"
                              + (f" and {count(kept[0], 'epoch')} of the next (in its checkpoint)" if started else "")
                              + f"; continue with: {command()} reproduce --resume {escape(shell(out_dir))}",
                              highlight=False, soft_wrap=True)
            return _stop_code()
        raise
    kept = keep_earlier(out_dir / "reproduce.parquet")  # another --from of this experiment finished before
    write_parquet(runs, out_dir / "reproduce.parquet")
    (out_dir / PARTIAL).unlink(missing_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    summary = reproduce.summary(runs, metric)
    table = Table(title=f"final {metric} over {seeds} seed(s), full budget")
    lost = bool(summary["diverged"].any())
    for col in ("config", "mean", "std", *(["finished", "diverged"] if lost else ["seeds"])):
        table.add_column(col, justify="right")
    for name, row in summary.iterrows():
        table.add_row(name, *(f"{row[k]:.4f}" if row[k] == row[k] else "-" for k in ("mean", "std")),  # NaN: -
                      str(int(row["seeds"])), *([str(int(row["diverged"]))] if lost else []))
    console.print(table)
    if len(configs) == 2:
        console.print(reproduce.difference_line(runs, metric), highlight=False)
    elif source:
        console.print(reproduce.SAME_TRIAL, highlight=False)
    if source:
        from .figures import write_html_report

        write_html_report(out_dir)
    console.print(f"wrote {out_dir}/reproduce.parquet" + (" and report.html" if source else "")
                  + (f"; the earlier reproduce is kept as {kept.name}" if kept else ""),
                  highlight=False, soft_wrap=True)
    return 0


def keep_earlier(path: Path) -> Path | None:
    """A finished reproduce at `path` (the experiment's earlier `reproduce --from`: other seeds, other data)
    copied to `reproduce-<its time>[-N].parquet` beside it before the new one replaces it; its new name."""
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    from .files import write_bytes

    for n in range(1, 1000):
        kept = path.with_name(f"{path.stem}-{stamp}{'' if n == 1 else f'-{n}'}{path.suffix}")
        try:
            write_bytes(path.read_bytes(), kept, exclusive=True)  # (also where there are no hard links)
            return kept
        except FileExistsError:
            continue
    raise FileExistsError(kept)


def cmd_report(args: argparse.Namespace) -> int:
    from .figures import write_html_report

    path = write_html_report(Path(args.experiment))
    console.print(f"wrote {path} and its figures", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
