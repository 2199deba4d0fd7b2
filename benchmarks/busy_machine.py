"""One trial on a busy machine: hpo's default threads against one thread and against torch's
own default, with and without another process spinning on a core.

    python benchmarks/busy_machine.py [--repeats 3]

PyTorch's OpenMP threads spin-wait at every parallel region. With two threads on two cores
and one other busy process, one of the two shares a core, and every region waits for it:
a trial collapses. This measures, for each workload and each thread setting, the seconds
of one fixed trial (no early stopping, no pruning) on a quiet machine and beside one
process that spins on a core:

- ``torch default``: what hpo did before: every core, OpenMP's default wait policy;
- ``OMP_NUM_THREADS=1``: the reference of the issue;
- ``hpo default``: what ``hpo run`` picks now (:func:`hpo.models.threads.configure_threads`).

Workloads: the digits study's first trial (its enqueued baseline, 30 epochs), and the
course's Fashion-MNIST network for one epoch on 12,000 rows (large enough that a second
thread pays on a quiet machine). Each trial runs in a fresh process, so the thread and
wait-policy settings take effect before torch starts. Settings alternate within each
repeat, so a change in the load of a shared machine hits each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import REPO, write_result

SETTINGS: dict[str, dict[str, str]] = {
    "torch default": {"HPO_THREADS_BENCH": "torch"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1", "HPO_THREADS_BENCH": "torch"},
    "hpo default": {"HPO_THREADS_BENCH": "hpo"},
}

# Runs in a fresh process: builds the workload, sets threads as asked, times one trial.
TRIAL = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.environ["HPO_REPO"])
from hpo.models.threads import configure_threads
from hpo.data.dataset import load_dataset
from hpo.spec import DataSpec, load_spec
from hpo.models.mlp import MLPSpec
workload = sys.argv[1]
if workload == "digits":
    spec, base = load_spec(Path(os.environ["HPO_REPO"]) / "studies" / "digits.yaml")
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    mlp, epochs = MLPSpec.from_params(spec.nn.baselines[0].params()), 30
else:
    spec, base = load_spec(Path(os.environ["HPO_REPO"]) / "studies" / "fashion_mnist.yaml")
    data_spec = spec.data.model_copy(update={"limit": 13333})
    data = load_dataset(data_spec, spec.task, base, spec.seed)
    # The course's Fashion-MNIST network, which studies/mnist.yaml enqueues.
    course, _ = load_spec(Path(os.environ["HPO_REPO"]) / "studies" / "mnist.yaml")
    baseline = course.nn.baselines[0]
    mlp = MLPSpec.from_params(baseline.params(), [l.model_dump() for l in baseline.layers])
    epochs = 1
if os.environ["HPO_THREADS_BENCH"] == "hpo":
    configure_threads(len(data.train.y), data.n_features)
import torch
from hpo.models.train import train_mlp
start = time.perf_counter()
train_mlp(mlp, data, epochs=epochs, patience=epochs, seed=0, device="cpu")
print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                  "rows": len(data.train.y), "features": data.n_features}))
"""


def run_trial(workload: str, setting: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(SETTINGS[setting], HPO_REPO=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", TRIAL, workload], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


class BusyNeighbour:
    """Another process that keeps one core busy, as a user's other job would."""

    def __enter__(self) -> BusyNeighbour:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["digits", "fashion"])
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {}
    threads: dict[str, int] = {}
    shapes: dict[str, str] = {}
    for _ in range(args.repeats):
        for workload in args.workloads:
            for machine_state in ("quiet", "busy"):
                for setting in SETTINGS:
                    key = f"{workload}|{machine_state}|{setting}"
                    if machine_state == "busy":
                        with BusyNeighbour():
                            result = run_trial(workload, setting)
                    else:
                        result = run_trial(workload, setting)
                    seconds.setdefault(key, []).append(result["seconds"])
                    threads[key] = result["threads"]
                    shapes[workload] = f"{result['rows']} rows x {result['features']} features"
                    print(f"{key}: {result['seconds']:.2f} s ({result['threads']} threads)")
    rows = []
    for workload in args.workloads:
        for machine_state in ("quiet", "busy"):
            reference = statistics.median(seconds[f"{workload}|{machine_state}|OMP_NUM_THREADS=1"])
            for setting in SETTINGS:
                key = f"{workload}|{machine_state}|{setting}"
                median = statistics.median(seconds[key])
                rows.append(
                    {
                        "workload": f"{workload} ({shapes[workload]})",
                        "machine": machine_state,
                        "setting": setting,
                        "threads": threads[key],
                        "seconds": round(median, 3),
                        "vs_one_thread": round(median / reference, 2),
                        "all_seconds": [round(s, 3) for s in seconds[key]],
                    }
                )
    write_result("busy_machine", {"repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
