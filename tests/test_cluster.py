"""The same search on a real multi-node Ray cluster (two nodes on this machine), joined with --address."""

import json
import os
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
    """Joined through RAY_ADDRESS, as ray.init takes it and `ray job submit` sets it (the --address flag: the
    tests below). Without --address the search started a Ray instance of its own beside the cluster."""
    space = {**TINY, "num_samples": 6, "scheduler": {"max_epochs": 3, "grace_period": 3, "reduction_factor": 2}}
    space["search"] = {**TINY["search"], "lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                           "--out", str(tmp_path), "--name", "exp"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": cluster.address})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith(f"joining the Ray cluster at RAY_ADDRESS={cluster.address} (unset RAY_ADDRESS")
    assert json.loads((tmp_path / "exp" / "run.json").read_text())["address"] == cluster.address
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


HEAD_WITH_TOKEN = r"""
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
print(cluster.address, flush=True)
sys.stdin.readline()  # until the test is done
cluster.shutdown()
"""


def test_a_cluster_that_wants_a_token_is_one_line_then_joined_with_it(tmp_path):
    """Ray >= 2.59 turns token authentication on for `ray start --head` where ~/.ray/auth_token exists, but a
    driver given an explicit address sends the token only with RAY_AUTH_MODE=token: without it, one line that
    says so (not ray.init's 20 retries, each a warning from Ray's C++ client); with it, the search runs."""
    token = "b1d3" * 16
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    (tmp_path / "home").mkdir()
    head = subprocess.Popen([sys.executable, "-c", HEAD_WITH_TOKEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        address = head.stdout.readline().strip()
        assert address, "the head did not start"
        space = {**TINY, "num_samples": 2, "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2}}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))

        def search(name: str, env: dict):
            return subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                                   "--out", str(tmp_path), "--name", name, "--address", address], capture_output=True,
                                  text=True, timeout=300, env={**env, "HOME": str(tmp_path / "home")})

        refused = search("without", plain)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "the cluster uses token authentication" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr
        assert not (tmp_path / "without").exists()
        joined = search("with", {**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
        assert len(pd.read_parquet(tmp_path / "with" / "trials.parquet")) == 2
    finally:
        head.communicate("\n", timeout=120)


def test_a_port_where_no_ray_cluster_answers_is_one_line(tmp_path):
    """Something listens (here a plain HTTP server), but no Ray GCS: one line within seconds, where ray.init
    retried 20 times, waiting 40 s each."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY))
        address = f"127.0.0.1:{server.server_address[1]}"
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                               "--out", str(tmp_path), "--name", "exp", "--address", address],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"cannot join --address '{address}': something answers there, but no Ray cluster did" in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_trials_that_no_node_can_hold_wait_for_one_with_a_note(cluster, tmp_path):
    """`resources: {cpu: 2}` on a cluster of 1-CPU nodes: Tune waited without a word. The plan now says
    that no node has 2 CPUs and the trials wait for one; a node that joins (an autoscaler's) runs them."""
    import time

    space = {**TINY, "num_samples": 2, "resources": {"cpu": 2, "gpu": 0},
             "scheduler": {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp", "--address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "exp" / "run.json").is_file() and time.time() < deadline:  # written after the plan
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(2)
    assert proc.poll() is None and not (tmp_path / "exp" / "epochs.jsonl").exists()  # waiting
    node = cluster.add_node(num_cpus=2)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        cluster.remove_node(node)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert ("note: resources: cpu 2 per trial, but no node of the cluster has more than 1 CPU: trials wait until "
            "such a node joins (an autoscaling cluster)") in " ".join(out.split())
    trials = pd.read_parquet(tmp_path / "exp" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()


def test_a_stopped_search_on_a_cluster_says_to_resume_it_there(cluster, tmp_path):
    """The `--resume` command that a stopped search prints (and `report` repeats) left out `--address`: run
    as printed, the resume went on with a Ray instance of the driver's machine alone."""
    import json
    import signal

    space = {**TINY, "num_samples": 12, "scheduler": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2}}
    space["search"] = {**TINY["search"], "lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    exp = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "search", "--space", str(tmp_path / "s.yaml"),
                             "--out", str(tmp_path), "--name", "exp", "--address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not proc.stdout.readline().startswith("trial "):  # a line per finished trial (not a terminal)
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    command = f"python main.py search --resume {exp} --address {cluster.address}"
    assert proc.returncode == 143 and out.strip().endswith(f"Continue with: {command}"), out[-2000:] + err[-2000:]
    assert json.loads((exp / "run.json").read_text())["address"] == cluster.address
    report = subprocess.run([sys.executable, str(ROOT / "main.py"), "report", str(exp)], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 2 and report.stderr.strip().endswith(f"continue it with: {command}"), report.stderr
    resumed = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, timeout=600,
                             cwd=ROOT)  # as printed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 12 and trials["node_id"].nunique() == 2
    again = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)  # a finished search: nothing to resume; more trials go to the cluster too
    assert again.returncode == 0 and f"search --extend {exp} --trials N --address {cluster.address}`)" in \
        " ".join(again.stdout.split()), again.stdout[-2000:]
