"""Search speed: vitsearch against the two peer baselines, same data, model, space and budget.

    python bench/search.py [--seeds 0 1 2] [--trials 16] [--epochs 20] [--peer-dir ../shared/peer]

For each seed, one after another on the same machine: `peer_tune.py` (Ray Tune + OptunaSearch + ASHA
written from Ray's docs), `peer_optuna.py` (Optuna alone: TPE + successive halving, 2 threads) and
`python main.py search --space quickstart` with the seed set (micro ViT on digits, 16 px, patch 4,
16 trials, <= 20 epochs, ASHA grace 2 / factor 3, 2 trials at a time). Wall time is the whole
process (imports and start-up included) for all three. Prints a table per run, the means and the
ratios vitsearch / peer for wall time, trial-epochs and best validation accuracy, by two definitions:
the best last-reported value of any trial, stopped ones included (what both peer scripts print), and
the best among trials that reached the full budget (what vitsearch recommends, and Optuna alone's
`study.best_value`; the Ray script prints no such figure). `--tools` runs a subset (e.g. without the
slow Ray script); `--keep DIR` keeps vitsearch's experiment folders (reports, study) to look into;
`--key-order file` runs the quickstart's space with its keys in the file's order instead of sorted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("ray_script", "optuna_alone", "vitsearch")


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.time() - t0, proc.stdout


def run_peer(script: Path, trials: int, epochs: int, seed: int) -> dict:
    wall, out = timed([sys.executable, str(script), str(trials), str(epochs), str(seed)], script.parent)
    report = json.loads(out.strip().splitlines()[-1])
    # best_val_acc: the best last-reported value of any trial, stopped ones included (both peers print
    # it); best_complete: Optuna alone's study.best_value, the best trial that reached the full budget.
    return {"wall_s": wall, "epochs": report["epochs_total"], "best_val_acc": report["best_val_acc"],
            "best_full_budget": report.get("best_complete", float("nan"))}


def run_vitsearch(trials: int, epochs: int, seed: int, work: Path, key_order: str = "sorted") -> dict:
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space.update(seed=seed, num_samples=trials)
    space["scheduler"]["max_epochs"] = epochs
    path = work / f"quickstart_seed{seed}.yaml"
    # Optuna draws a trial's values key by key, so the key order is part of the seed: "sorted" (the
    # default, every published run) is another search than the quickstart file's own order ("file").
    path.write_text(yaml.safe_dump(space, sort_keys=key_order == "sorted"))
    name = f"bench-seed{seed}-{int(time.time())}"
    wall, _ = timed([sys.executable, str(ROOT / "main.py"), "search", "--space", str(path), "--out", str(work),
                     "--name", name], ROOT)
    trials_df = pd.read_parquet(work / name / "trials.parquet")
    done = trials_df[trials_df["status"] == "completed"]
    return {"wall_s": wall, "epochs": int(trials_df["epochs_run"].sum()),
            "best_val_acc": float(trials_df["final_val_acc"].max()),
            "best_full_budget": float(done["final_val_acc"].max()) if len(done) else float("nan"),
            "trial_startup_s": trial_startup(work / name / "epochs.jsonl")}


def trial_startup(log: Path) -> float:
    """Mean time from a trial's end to the next trial's first training step on the same (reused) actor."""
    rows = pd.DataFrame([json.loads(line) for line in log.read_text().splitlines() if line.strip()])
    per_trial = rows.groupby("trial_id").agg(pid=("pid", "first"), first=("timestamp", "min"),
                                             last=("timestamp", "max"), first_epoch=("epoch_time_s", "first"))
    per_trial["start"] = per_trial["first"] - per_trial["first_epoch"]
    gaps = []
    for _, group in per_trial.sort_values("start").groupby("pid"):
        gaps += list(group["start"].to_numpy()[1:] - group["last"].to_numpy()[:-1])
    return float(sum(gaps) / len(gaps)) if gaps else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--peer-dir", default=str(ROOT.parent / "shared" / "peer"))
    ap.add_argument("--keep", metavar="DIR", help="keep vitsearch's experiment folders in DIR (default: deleted)")
    ap.add_argument("--key-order", choices=("sorted", "file"), default="sorted",
                    help="vitsearch's space keys sorted (default) or in the quickstart file's order")
    args = ap.parse_args()
    peer = Path(args.peer_dir)
    rows = []
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vitsearch-bench-") as scratch:
        tmp = args.keep or scratch
        for seed in args.seeds:
            for tool in args.tools:
                if tool == "vitsearch":
                    measured = run_vitsearch(args.trials, args.epochs, seed, Path(tmp), args.key_order)
                else:
                    script = peer / ("peer_tune.py" if tool == "ray_script" else "peer_optuna.py")
                    measured = run_peer(script, args.trials, args.epochs, seed)
                result = {"tool": tool, "seed": seed, **measured}
                rows.append(result)
                startup = f"  trial start-up {result['trial_startup_s']:.2f} s" if "trial_startup_s" in result else ""
                full = result.get("best_full_budget", float("nan"))
                print(f"seed {seed} {tool:12s} wall {result['wall_s']:6.1f} s  trial-epochs {result['epochs']:4d}  "
                      f"best val_acc {result['best_val_acc']:.4f}  best full-budget {full:.4f}{startup}", flush=True)
    df = pd.DataFrame(rows)
    means = df.groupby("tool")[["wall_s", "epochs", "best_val_acc", "best_full_budget"]].mean()
    print()
    print(means.round(4).to_string())
    peers = [t for t in TOOLS if t != "vitsearch" and t in means.index] if "vitsearch" in means.index else []
    for peer_name in peers:
        ours, other = means.loc["vitsearch"], means.loc[peer_name]
        print(f"vitsearch / {peer_name}: wall {ours.wall_s / other.wall_s:.3f}x, trial-epochs "
              f"{ours.epochs / other.epochs:.2f}x, mean best val_acc {ours.best_val_acc:.4f} vs "
              f"{other.best_val_acc:.4f} ({ours.best_val_acc - other.best_val_acc:+.4f})" +
              ("" if math.isnan(other.best_full_budget) else
               f", mean best full-budget val_acc {ours.best_full_budget:.4f} vs {other.best_full_budget:.4f} "
               f"({ours.best_full_budget - other.best_full_budget:+.4f})"))
    spread = df.groupby("tool")["best_val_acc"].agg(statistics.pstdev)
    print("best val_acc spread (population std over seeds): " +
          ", ".join(f"{k} {v:.4f}" for k, v in spread.items()))


if __name__ == "__main__":
    main()
