"""Faults a long sweep meets, injected for real: a trial process killed (as the OOM killer would), and a
Ray node lost mid-search. The sweep retries from checkpoints and still ends with complete reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
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


def start_search(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SLOW))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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
