"""Faults a long sweep meets, injected for real: a trial process killed (as the OOM killer would), and a
Ray node lost mid-search. The sweep retries from checkpoints and still ends with complete reports."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from test_search import TINY

ROOT = Path(__file__).resolve().parents[1]
SLOW = {**TINY, "num_samples": 4, "retries": 2, "checkpoint_every_s": 0,
        "scheduler": {"max_epochs": 6, "grace_period": 6, "reduction_factor": 2}}
SLOW["fixed"] = {**TINY["fixed"], "data_subset": 1000, "image_size": 16, "patch_size": 4}  # ~0.5 s epochs
SLOW["search"] = {**TINY["search"], "lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def wait_for(predicate, log: Path, proc: subprocess.Popen, timeout_s: float = 300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = predicate(rows(log))
        if found:
            return found
        assert proc.poll() is None, "the search ended before the fault could be injected"
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the search")


def start_search(tmp_path: Path, *extra: str, own_group: bool = False) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SLOW))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=own_group)
    return proc, tmp_path / "exp"


def assert_complete(proc: subprocess.Popen, exp: Path) -> pd.DataFrame:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all(), trials[["status", "reason"]]
    assert len(epochs) == 24 and not epochs.duplicated(["trial_id", "epoch"]).any()
    return trials


def test_a_killed_trial_process_is_retried_from_its_checkpoint(tmp_path):
    proc, exp = start_search(tmp_path)
    log = exp / "epochs.jsonl"
    victim = wait_for(lambda rs: next((r for r in rs if r["epoch"] == 3), None), log, proc)
    os.kill(victim["pid"], signal.SIGKILL)  # the trial's Ray worker process dies mid-training
    trials = assert_complete(proc, exp)
    after = [r for r in rows(log) if r["trial_id"] == victim["trial_id"] and r["pid"] != victim["pid"]]
    assert after and min(r["epoch"] for r in after) >= 3  # continued from its checkpoint, not from epoch 1
    assert victim["trial_id"] in set(trials["trial_id"])


def test_losing_a_node_mid_search_still_completes_the_report(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        proc, exp = start_search(tmp_path, "--address", cluster.address)
        log = exp / "epochs.jsonl"
        wait_for(lambda rs: any(r["node_id"] == worker.node_id and r["epoch"] >= 2 for r in rs), log, proc)
        cluster.remove_node(worker)  # the node and every process on it go away
        trials = assert_complete(proc, exp)
        lost = {r["trial_id"] for r in rows(log) if r["node_id"] == worker.node_id}
        assert lost <= set(trials["trial_id"])  # the lost node's trials were retried elsewhere and finished
        assert (trials["node_id"] != worker.node_id).all()
    finally:
        cluster.shutdown()


def test_sigterm_to_the_whole_process_group_stops_the_search_cleanly(tmp_path):
    """GNU `timeout` (and `kill -- -PGID`) signals the search's whole process group. Ray's GCS and raylet were
    in it and died at once; the driver's stop then hung 60 s in Tune's cleanup and ended with Ray's "Failed to
    connect to GCS" instead of the resume line. Now they run in a group of their own and the driver stops them."""
    proc, exp = start_search(tmp_path, own_group=True)
    wait_for(lambda rs: len(rs) >= 2, exp / "epochs.jsonl", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert f"python main.py search --resume {exp}" in out and "Failed to connect to GCS" not in out + err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), ("closed stdout", 141)],
                         ids=["ctrl-c", "sigterm", "closed-stdout"])
def test_ctrl_c_keeps_everything_and_resume_finishes_the_search(tmp_path, sig, code):
    """Ctrl-C, or SIGTERM (`kill`, a batch system's time limit; Ray's driver used to abort with a stack
    dump), stops the search with every finished trial kept and the resume command printed. So does a
    closed stdout (`search ... | head`, a `tee` stopped): rich exited with code 1 from inside Tune's
    callback, and the search died without a word; the rest of its output now goes to stderr."""
    proc, exp = start_search(tmp_path)
    log = exp / "epochs.jsonl"

    def one_done_one_halfway(rs):
        latest = {}
        for r in rs:
            latest[r["trial_id"]] = r["epoch"]
        return any(e == 6 for e in latest.values()) and any(2 <= e < 6 for e in latest.values())

    wait_for(one_done_one_halfway, log, proc)
    if sig == "closed stdout":  # the reader goes away: the next progress line meets a broken pipe
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=120)
        out = ""
        assert err.startswith("stdout was closed (the program reading it ended): stopping as on Ctrl-C\n"), err
    else:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err and "SIGTERM received" not in out + err
    assert f"python main.py search --resume {exp}" in out + err
    assert not (exp / "trials.parquet").exists()  # the reports wait for the whole search
    before = rows(log)
    done_before = {r["trial_id"] for r in before if r["epoch"] == 6}
    original = None
    if sig == signal.SIGTERM:  # resumed as a copy in another folder, under another name
        original = (exp / "study.db").read_bytes()
        exp = shutil.copytree(exp, tmp_path / "elsewhere" / "exp-copy", symlinks=True)
        log = exp / "epochs.jsonl"

    resumed = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--resume", str(exp)],
                             capture_output=True, text=True, timeout=600)
    if original is not None:
        # The copy's study holds every trial, and the original's study.db was left as it was: the study's
        # storage in Tune's saved state named the original's path, and the copy's trials went there.
        assert (tmp_path / "exp" / "study.db").read_bytes() == original
        study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all(), trials[["status", "reason"]]
    assert len(epochs) == 24 and not epochs.duplicated(["trial_id", "epoch"]).any()
    after = rows(log)[len(before):]
    assert all(r["epoch"] == 6 for r in after if r["trial_id"] in done_before)  # not trained again
    # The search's time is both runs', the stopped one's included, not the resumed run's alone.
    run = json.loads((exp / "run.json").read_text())
    assert len(run["run_walls"]) == 2 and all(w > 0 for w in run["run_walls"])
    assert run["wall_s"] == pytest.approx(sum(run["run_walls"]), abs=0.2)
    assert f"in {sum(run['run_walls']):.0f} s over 2 runs (this one: " in resumed.stdout
    page = (exp / "report.html").read_text()
    assert f"search wall time (s), summed over its 2 runs</td><td>{run['wall_s']:.0f}<" in page
    # Resumed again, the finished search shows its summary and starts, trains and rewrites nothing.
    written = {p.name: p.stat().st_mtime_ns for p in exp.iterdir() if p.is_file()}
    again = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--resume", str(exp)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "the search has finished: nothing to resume. 4 trials, 24 trial-epochs" in again.stdout
    assert "probe:" not in again.stdout and "top trials" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in exp.iterdir() if p.is_file()} == written


def test_a_second_ctrl_c_while_the_search_stops_keeps_it_resumable(tmp_path):
    """Ctrl-C twice (an impatient user): Tune skips its last save, and the search ends at once. It said
    only "interrupted", and the run's time was missing from run.json; now the line gives the resume
    command and the time is counted, and the resume finishes the search."""
    proc, exp = start_search(tmp_path)
    wait_for(lambda rs: any(r["epoch"] == 6 for r in rs), exp / "epochs.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert f"python main.py search --resume {exp}" in out and "Traceback" not in out + err, out[-2000:] + err
    walls = json.loads((exp / "run.json").read_text())["run_walls"]
    assert len(walls) == 1 and walls[0] > 0
    resumed = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--resume", str(exp)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all(), trials[["status", "reason"]]
    assert " over 2 runs (this one: " in resumed.stdout


SIGNAL_AT = r"""
import importlib, os, signal, sys, threading
import ray
import vitsearch.data, vitsearch.figures, vitsearch.search_cli
from vitsearch.cli import run

# Ctrl-C as in a terminal: a process started by a background job (`cmd &` in a script) inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
where, sig, when = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3]
module, name = where.rsplit(".", 1)
module = importlib.import_module(module)
real = getattr(module, name)
real_shutdown, ray_stopped = ray.shutdown, threading.Event()

def shutdown(*args, **kwargs):
    real_shutdown(*args, **kwargs)
    ray_stopped.set()

def signalled(*args, **kwargs):  # the signal comes while this step runs
    if when == "after-ray-stopped":
        assert ray_stopped.wait(60)
    os.kill(os.getpid(), sig)
    return real(*args, **kwargs)

ray.shutdown = shutdown
setattr(module, name, signalled)
sys.argv = [sys.argv[0], *sys.argv[4:]]
run()  # as main.py does
"""


@pytest.mark.parametrize("where", ["vitsearch.data.load_data", "ray._private.worker.connect",
                                   "vitsearch.search_cli._print_plan"],
                         ids=["loading-data", "inside-ray-init", "ray-started"])
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)], ids=["ctrl-c", "sigterm"])
def test_a_stop_before_the_first_trial_leaves_no_half_made_experiment(tmp_path, where, sig, code):
    """Ctrl-C or SIGTERM while the data loads, inside ray.init (as the driver connects), or once Ray has
    started but before Ray Tune runs: one line, the signal's exit code, no traceback (Ray's driver used to
    exit with code 15 or abort on SIGTERM here), and no experiment folder that --resume could not continue."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SLOW))
    exp = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT, where, sig, "now", "search", "--space",
                           str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--name", "exp"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "interrupted before any trial started: nothing was trained" in proc.stdout, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out
    assert not exp.exists()
    # The plan's first line comes once the data is loaded, before Ray starts and the probe ends (ViT-S's
    # probe on a CPU takes about a minute, and the search said nothing until then)
    assert (f"search {SLOW['name']}: 4 trials" in proc.stdout) == (where != "vitsearch.data.load_data"), out[-3000:]


def test_a_stop_while_ray_starts_and_a_slow_probe_runs_exits_cleanly(tmp_path):
    """SIGTERM inside ray.init while the throughput probe is still stepping a large model (ViT-S at 64 px on
    a CPU: seconds per step): the probe stops after its step, or is left to the exit, and the process
    exits with 143 instead of aborting in the interpreter's teardown ("terminate called without an active
    exception", code -6, seen in CI on a busy machine with the quickstart-sized space)."""
    space = {**SLOW, "fixed": {**SLOW["fixed"], "model": "vit_small", "image_size": 64, "patch_size": 8},
             "search": {"lr": {"loguniform": [1e-4, 1e-3]}, "batch_size": {"choice": [32, 256]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT, "ray._private.worker.connect", "SIGTERM", "now",
                           "search", "--space", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--name", "exp"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted before any trial started" in proc.stdout and "Fatal Python error" not in out
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("where", ["vitsearch.search.ended_trials", "vitsearch.report.write_reports"],
                         ids=["tune-returned", "before-the-parquet-files"])
def test_a_stop_after_the_trials_and_before_the_parquet_files_says_how_to_resume(tmp_path, where):
    """A second Ctrl-C while Tune stops, or a stop after the last trial and before the Parquet files, said
    only "interrupted"; it now gives the resume command, which writes the reports. (A Ctrl-C after the
    trials was ignored: Tune's handler stayed in place after a search it had not stopped.) A stop that came
    once Tune had returned, as Ray stopped (CI, a second Ctrl-C), lost the run's time from run.json."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SLOW, "num_samples": 2}))
    exp = tmp_path / "my exp"  # a name with a space: the printed command quotes it (it was printed bare)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT, where, "SIGINT", "now",
                           "search", "--space", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--name", "my exp"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out[-3000:]
    assert f"interrupted; continue with: python main.py search --resume '{exp}'\n" in proc.stdout, out[-3000:]
    assert "Traceback" not in out and not (exp / "trials.parquet").exists()
    walls = json.loads((exp / "run.json").read_text())["run_walls"]  # (the run's time was lost: "in 1 s")
    assert len(walls) == 1 and walls[0] > 0
    printed = shlex.split(proc.stdout.split("continue with: ")[1].splitlines()[0])
    resumed = subprocess.run([sys.executable, *printed[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert len(pd.read_parquet(exp / "trials.parquet")) == 2 and (exp / "report.html").is_file()
    assert " over 2 runs (this one: " in resumed.stdout


def test_a_stop_while_the_reports_are_drawn_keeps_the_parquet_files(tmp_path):
    """SIGTERM after the last trial, while report.html is drawn: exit code 143, no traceback and no error of
    Ray's (Ray is stopped before the process exits), and `python main.py report` draws the rest. The signal
    comes once Ray has stopped (on its own thread, while the reports are drawn): ray.shutdown used to put
    SIGTERM's default action back, and the process died silently with -15."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SLOW, "num_samples": 2}))
    exp = tmp_path / "my exp"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT, "vitsearch.figures.write_html_report", "SIGTERM",
                           "after-ray-stopped",
                           "search", "--space", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--name", "my exp"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-3000:]
    assert f"`python main.py report '{exp}'` draws the rest" in proc.stdout, out[-3000:]
    assert "Traceback" not in out and "core worker" not in out and "SIGTERM received" not in out
    assert len(pd.read_parquet(exp / "trials.parquet")) == 2 and not (exp / "report.html").exists()
    drawn = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(exp)], capture_output=True,
                           text=True, timeout=300)
    assert drawn.returncode == 0 and (exp / "report.html").is_file(), drawn.stderr[-2000:]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_trial_that_dies_before_its_first_report_is_recorded_as_failed(tmp_path):
    space = {**SLOW, "retries": 0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline:  # the first trial process, killed while it imports
        for pid in _descendants(proc.pid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    victim = pid
                    break
            except OSError:
                continue
        time.sleep(0.02)
    assert victim is not None, "no trial process appeared"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert victim not in {r["pid"] for r in rows(tmp_path / "exp" / "epochs.jsonl")}  # it never reported
    trials = pd.read_parquet(tmp_path / "exp" / "trials.parquet")
    failed = trials[trials["status"] == "failed"]
    assert len(trials) == 4 and len(failed) == 1, trials[["status", "reason"]]
    row = failed.iloc[0]
    assert row["epochs_run"] == 0 and row["reason"]
    assert row["batch_size"] > 0 and row["lr"] > 0  # its config is kept
    assert (trials["status"] == "completed").sum() == 3
    # its progress line gives the same reason (Ray's error, not a bare "error")
    reason = " ".join(row["reason"].split())
    name = f"#{row['optuna_number']}" + (" defaults" if row["is_defaults"] else "")  # as the summary table has it
    line = [x for x in out.splitlines() if x.startswith(f"trial {name} ")]
    assert f"trial {name} failed at epoch 0: {reason}; " in " ".join(out.split()), line


CLAIMED_MEANWHILE = """
import sys

from vitsearch import files
from vitsearch.cli import run

real = files.write_yaml

def claimed_meanwhile(data, path, *args, exclusive=False, **kwargs):
    if exclusive and not getattr(claimed_meanwhile, "done", False):  # the other run passed its check too
        claimed_meanwhile.done = True
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# written by the other run")
    return real(data, path, *args, exclusive=exclusive, **kwargs)

files.write_yaml = claimed_meanwhile
run()
"""


def test_two_searches_started_with_one_name_do_not_share_the_folder(tmp_path):
    """Two searches started together with the same --name both found the folder empty; the second then
    failed with a traceback from Optuna's storage (an IntegrityError), after replacing the first one's
    space.yaml. The first to write its space.yaml owns the folder; the other stops in one line, exit 2.
    Without --name (the default name has the time to the second, as in a script's loop of searches) the
    other one goes on in <name>-2."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SLOW, "num_samples": 1}))
    exp = tmp_path / "exp"
    command = [sys.executable, "-c", CLAIMED_MEANWHILE, "search", "--space", str(tmp_path / "s.yaml"), "--out"]
    proc = subprocess.run([*command, str(tmp_path), "--name", "exp"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stderr.strip() == (f"error: experiment folder {str(exp)!r} was taken by another search started "
                                   "meanwhile; pick another --name (nothing of either search was changed)")
    assert sorted(p.name for p in exp.iterdir()) == ["space.yaml"]
    assert (exp / "space.yaml").read_text() == "# written by the other run"

    out = tmp_path / "unnamed"
    proc = subprocess.run([*command, str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    first, second = sorted(out.iterdir(), key=lambda p: len(p.name))
    assert second.name == first.name + "-2" and (first / "space.yaml").read_text() == "# written by the other run"
    assert (second / "trials.parquet").is_file() and str(second) in " ".join(proc.stdout.split())


def test_two_train_runs_started_together_do_not_share_the_folder(tmp_path):
    """`train` without --name names its folder by the time to the second: two runs launched together
    (`for lr in ...; do python main.py train --set lr=$lr & done`) wrote checkpoints and epochs into one
    folder. Each run now claims its folder (config.yaml, an exclusive create) before it trains."""
    command = [sys.executable, "-c", CLAIMED_MEANWHILE, "train", "--set", "model=vit_micro", "--set", "image_size=16",
               "--set", "patch_size=4", "--set", "epochs=1", "--set", "data_subset=128", "--set", "batch_size=32"]
    proc = subprocess.run([*command, "--out", str(tmp_path), "--name", "run"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stderr.strip() == (f"error: run folder {str(tmp_path / 'run')!r} was taken by another run started "
                                   "meanwhile; pick another --name")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    out = tmp_path / "unnamed"
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    first, second = sorted(out.iterdir(), key=lambda p: len(p.name))
    assert second.name == first.name + "-2" and (first / "config.yaml").read_text() == "# written by the other run"
    assert {"config.yaml", "epochs.parquet", "checkpoint.pt"} <= {p.name for p in second.iterdir()}


def test_sigterm_stops_a_train_run_as_ctrl_c_does(tmp_path):
    """`kill PID` (`timeout`, a batch system's time limit) used to kill `train` on the spot: before its
    first epoch it left a run folder holding only config.yaml, after it no word of how to resume. Now
    SIGTERM stops it as Ctrl-C does: exit code 143, before the first epoch nothing left, after it the
    resume command, which then finishes the run."""
    train = ["train", "--set", "model=vit_micro", "--set", "image_size=16", "--set", "patch_size=4", "--set",
             "data_subset=256", "--set", "batch_size=32"]
    proc = subprocess.run([sys.executable, "-c", "import vitsearch.train\n" + SIGNAL_AT, "vitsearch.train.train",
                           "SIGTERM", "now", *train,
                           "--out", str(tmp_path / "early")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 143 and proc.stderr.strip() == "interrupted", (proc.stdout + proc.stderr)[-3000:]
    assert not (tmp_path / "early").exists()

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *train, "--set", "epochs=60", "--out",
                             str(tmp_path), "--name", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "epochs.parquet").is_file() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    done = len(pd.read_parquet(run / "epochs.parquet"))
    assert 1 <= done < 60
    assert err.strip().startswith("interrupted after epoch ") and err.strip().endswith(
        f" of 60; continue with: python main.py train --resume {run}"), err[-2000:]
    resumed = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--resume", str(run)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert pd.read_parquet(run / "epochs.parquet")["epoch"].tolist() == list(range(1, 61))


def test_a_reproduce_stopped_before_its_first_epoch_leaves_nothing(tmp_path):
    """It now claims its folder before training (its finished runs are kept there as they come), and takes
    it back when stopped before anything was trained."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "import vitsearch.train, vitsearch.data\n" + SIGNAL_AT,
                           "vitsearch.train.train", "SIGTERM", "now", "reproduce", "--seeds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 143 and proc.stderr.strip() == "interrupted", proc.stdout + proc.stderr
    assert not out.exists()


def test_a_train_run_whose_stdout_is_closed_stops_as_on_ctrl_c(tmp_path):
    """`train ... | head`: rich exited with code 1 on the broken pipe, without a word of how to resume."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", "--set", "model=vit_micro",
                             "image_size=16", "patch_size=4", "data_subset=256", "batch_size=32", "epochs=60",
                             "--out", str(tmp_path), "--name", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not proc.stdout.readline().startswith("epoch "):
        assert proc.poll() is None, proc.communicate()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err.startswith("stdout was closed (the program reading it ended): stopping as on Ctrl-C\n"), err
    done = len(pd.read_parquet(run / "epochs.parquet"))
    assert 1 <= done < 60 and f"interrupted after epoch {done} of 60; continue with: python main.py train " \
        f"--resume {run}" in err, err


def test_a_full_device_stops_the_search_in_one_line_and_it_resumes_once_there_is_space(tmp_path):
    """The results folder's device fills up (checkpoints, the study, Tune's state): every trial failed with
    a traceback and so did the driver (`sqlite3.OperationalError: database or disk is full`), and Tune's
    saved state was cut short, so that a resume started the search over. Now the first trial that meets
    the full device stops the search as Ctrl-C does, its half-written checkpoint is given back, and the
    resume goes on once there is space. A real tmpfs of 600 KiB (skipped where this process may not mount)."""
    device = tmp_path / "small"
    device.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(device)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY))
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                               "--out", str(device), "--name", "exp"], capture_output=True, text=True, timeout=600)
        exp = device / "exp"
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.stderr.strip().startswith("error: a device the search writes to is full (") \
            and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().endswith(f"Free some space, then continue with: python main.py search --resume "
                                            f"{exp}"), proc.stderr[-3000:]
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not list((exp / "checkpoints").rglob("*.uploading"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(device)], check=True)
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--resume", str(exp)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        trials = pd.read_parquet(exp / "trials.parquet")
        assert len(trials) == TINY["num_samples"] and not (trials["status"] == "failed").any(), trials
        study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
        assert len(study.trials) == TINY["num_samples"]
    finally:  # lazily: Ray's processes of the resumed search may still hold files there for a while
        subprocess.run(["umount", "-l", str(device)], capture_output=True)


def test_a_data_file_no_trial_can_read_stops_the_search_and_it_resumes_once_the_file_is_back(tmp_path):
    """A streamed folder's file that a trial cannot read (removed or broken since the load, or missing on a
    node) failed every trial in turn, each recorded as failed for good (12 of 12 in the case found), and the
    search "finished". Now the first trial to meet it stops the search with one line, and a resume runs the
    rest once the file is back. 600 small PNGs: the load opens every 2nd file only, so the broken 2nd one is
    first met by a trial."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(600):
        folder = tmp_path / "img" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i:03}.png")
    victim = tmp_path / "img" / "c0" / "002.png"
    good = victim.read_bytes()
    victim.write_bytes(good[:20])  # cut short, as a copy that stopped
    space = {**TINY, "num_samples": 4, "retries": 1, "scheduler": {"max_epochs": 2, "grace_period": 1},
             "fixed": {**TINY["fixed"], "data": f"imagefolder:{tmp_path / 'img'}", "loader": "stream",
                       "data_subset": None, "loader_workers": 0, "batch_size": 32},  # (512 > the 480 images)
             "search": {"lr": {"loguniform": [1e-3, 3e-3]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                           "--out", str(tmp_path), "--name", "exp"], capture_output=True, text=True, timeout=600)
    exp = tmp_path / "exp"
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: a trial could not read the data (cannot read image '{victim}': ") \
        and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().endswith(f"then continue with: python main.py search --resume {exp}"), proc.stderr
    assert not (exp / "trials.parquet").exists()
    victim.write_bytes(good)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--resume", str(exp)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 4 and not (trials["status"] == "failed").any(), trials
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{exp / 'study.db'}")
    assert sorted(t.state.name for t in study.trials if t.state.name in ("FAIL", "RUNNING")) == []
