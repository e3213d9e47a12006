"""The same search on a real multi-node Ray cluster (two nodes on this machine), joined with --address."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_search import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_trials_run_on_more_than_one_node(cluster, tmp_path):
    space = {**TINY, "num_samples": 6, "scheduler": {"max_epochs": 3, "grace_period": 3, "reduction_factor": 2}}
    space["search"] = {**TINY["search"], "lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                           "--out", str(tmp_path), "--name", "exp", "--address", cluster.address],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "exp" / "trials.parquet")
    assert len(trials) == 6 and (trials["status"] == "completed").all()
    assert trials["node_id"].nunique() == 2  # both nodes ran trials


def test_unreachable_address_is_a_one_line_error(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                           "--out", str(tmp_path), "--name", "exp", "--address", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot start or reach --address '127.0.0.1:1'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()
