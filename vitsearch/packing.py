"""Trial packing for `resources: {gpu: auto}`: how many trials share one GPU.

Small ViT trials leave most of a large GPU idle, so several trials on one GPU (fractional GPU resources
in Ray Tune) can raise total throughput. Before a search on a GPU, `probe` measures the space's most
expensive configuration (its largest batch) with k = 1, 2, 4, 8 trials running at once on one GPU, as
real Ray tasks each holding 1/k of the GPU: every task builds the trainer, warms up, waits for a common
start time, then trains for a fixed window; the aggregate is the sum of their images/s. k doubles while
the aggregate rises by at least `MIN_GAIN` and k trials' peak memory fits in `MEMORY_SHARE` of the
GPU's memory; `choose` makes that decision from the measurements. Without a GPU nothing is probed:
trials run on CPUs with `resources.cpu` each.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

CANDIDATES = (1, 2, 4, 8)
MIN_GAIN = 1.10  # another doubling must add >= 10 % aggregate throughput
MEMORY_SHARE = 0.85  # k trials' peak memory must fit in this share of the GPU's memory
WINDOW_S = 4.0  # measured training time of each probe task
START_DELAY_S = 20.0  # time for k tasks to start, build and warm up before the common start


@dataclass
class Packing:
    trials_per_gpu: int
    reason: str
    measured: list[dict[str, float]] = field(default_factory=list)  # k, aggregate_img_s, peak_memory_gb

    def describe(self) -> str:
        rows = ", ".join(f"{int(m['k'])}: {m['aggregate_img_s']:,.0f} img/s ({m['peak_memory_gb']:.1f} GB each)"
                         for m in self.measured)
        return f"{self.trials_per_gpu} trial(s) per GPU ({self.reason}; measured {rows})"

    def to_dict(self) -> dict[str, Any]:
        return {"trials_per_gpu": self.trials_per_gpu, "reason": self.reason, "measured": self.measured}


def choose(measured: list[dict[str, float]], memory_total_gb: float) -> Packing:
    """The packing to use, from probe rows sorted by k (k = 1 first)."""
    best = measured[0]
    reason = "only one trial per GPU was measured"
    for row in measured[1:]:
        if row["k"] * row["peak_memory_gb"] > MEMORY_SHARE * memory_total_gb:
            reason = f"{int(row['k'])} would not fit in memory"
            break
        if row["aggregate_img_s"] < MIN_GAIN * best["aggregate_img_s"]:
            reason = f"{int(row['k'])} added less than {MIN_GAIN - 1:.0%} throughput"
            break
        best = row
        reason = f"best aggregate throughput among {', '.join(str(int(r['k'])) for r in measured)}"
    return Packing(int(best["k"]), reason, measured)


def probe(cfg, data, device: str = "cuda") -> Packing:
    """Measure k = 1, 2, 4, 8 concurrent trials of `cfg` on one GPU (Ray must be initialised)."""
    import ray
    import torch

    total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    data_ref = ray.put(data)
    measured: list[dict[str, float]] = []
    for k in CANDIDATES:
        if measured and k * measured[0]["peak_memory_gb"] > MEMORY_SHARE * total_gb:
            # not run: k copies of one trial's peak would not fit; recorded so that `choose` says so
            measured.append({"k": k, "aggregate_img_s": 0.0, "peak_memory_gb": measured[0]["peak_memory_gb"]})
            break
        measured.append(measure(cfg, data_ref, device, k))
        if len(measured) > 1 and measured[-1]["aggregate_img_s"] < MIN_GAIN * measured[-2]["aggregate_img_s"]:
            break
    return choose(measured, total_gb)


def measure(cfg, data_ref, device: str, k: int) -> dict[str, float]:
    """k concurrent training windows of `cfg` on one GPU, as Ray tasks holding 1/k of it each."""
    import ray

    start_at = time.time() + START_DELAY_S
    task = ray.remote(_window_task).options(num_gpus=1.0 / k, num_cpus=0)
    rates = ray.get([task.remote(cfg, data_ref, device, start_at, WINDOW_S) for _ in range(k)])
    return {"k": k, "aggregate_img_s": sum(r[0] for r in rates), "peak_memory_gb": max(r[1] for r in rates)}


def _window_task(cfg, data, device: str, start_at: float, window_s: float) -> tuple[float, float]:
    from .train import measure_window

    return measure_window(cfg, data, device, start_at=start_at, window_s=window_s)


def measure_in_processes(cfg, data, device: str, k: int, window_s: float = WINDOW_S,
                         timeout_s: float = 600.0) -> dict[str, float]:
    """`measure` without Ray: k spawned processes on one GPU, each building the trainer and warming up,
    then all training for the same `window_s` after a barrier. For machines where Ray is not installed
    (bench/packing.py on a lent GPU machine whose image has torch and timm but no Ray); the GPU sees
    the same k processes as with Ray's fractional GPUs."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_window_process, args=(cfg, data, device, window_s, barrier, results), daemon=True)
             for _ in range(k)]
    for proc in procs:
        proc.start()
    rates: list = []
    deadline = time.time() + timeout_s
    try:
        while len(rates) < k:
            try:
                rates.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.time() > deadline:  # killed (OOM, signal) before it could report
                    rates.append(f"exit code {dead[0]}" if dead else f"no result within {timeout_s:.0f} s")
                    barrier.abort()  # the others stop waiting for it
                    break
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [r for r in rates if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"a packing probe process failed: {failed[0]}")
    return {"k": k, "aggregate_img_s": sum(r[0] for r in rates), "peak_memory_gb": max(r[1] for r in rates)}


def _window_process(cfg, data, device: str, window_s: float, barrier, results) -> None:
    try:
        from vitsearch.train import measure_window

        results.put(measure_window(cfg, data, device, window_s=window_s, ready=barrier.wait))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent as text; the others stop waiting)
        barrier.abort()
        results.put(f"{exc.__class__.__name__}: {exc}")
