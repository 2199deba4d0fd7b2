"""Trials per hour on the digits study: one worker with every thread, N with them split
(and, for reference, one worker on one thread).

    python benchmarks/workers_scaling.py [--trials 40] [--repeats 2] [--workers 2]

Each configuration runs `hpo run studies/digits.yaml --workers N` on a fresh SQLite
storage (the default one, as a user runs it), with the same trials: pruning off and the
same parameter sets enqueued, so that every run trains exactly the same networks and only
the way they are run differs. Runs alternate (1, N, 1 on one thread, 1, N, ...) so that a
change in the load of a shared machine hits each alike.

Measured per run, from the storage: trials per hour between the first trial's start and
the last one's end (the steady rate; process start-up is reported apart), and where a
trial's time goes: training (the trial's ``train_seconds``) against the rest (Optuna's
sampling, storage writes, the artifact upload). Written to
``benchmarks/results/workers_scaling.json`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from hpo.spec import StudySpec  # noqa: E402
from hpo.studies.search_space import suggest  # noqa: E402


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def bench_spec(folder: Path, n_params: int) -> tuple[Path, list[dict[str, Any]]]:
    """studies/digits.yaml with pruning off and ``n_params`` fixed trials to enqueue."""
    raw = yaml.safe_load((REPO / "studies" / "digits.yaml").read_text())
    raw["pruner"] = "none"
    spec = StudySpec.model_validate(raw)
    # The parameter sets: the first draws of a seeded random search over the spec's space.
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = []
    for _ in range(n_params):
        trial = sampler_study.ask()
        params.append(suggest(trial, spec.nn.search_space))
        sampler_study.tell(trial, 0.0)
    raw["nn"]["baselines"] = params  # enqueued once, in order, when the study is created
    path = folder / "digits-bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, params


def run_once(spec_path: Path, n_workers: int, trials: int, threads: int | None) -> dict[str, Any]:
    """One `hpo run --workers N`; ``threads`` pins torch's threads of a single worker."""
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("OMP_NUM_THREADS", None)  # one worker gets every thread, N split them
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        cmd = [sys.executable, "-m", "hpo", "run", str(spec_path), "--trials", str(trials)]
        cmd += ["--workers", str(n_workers), "--quiet"]
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        if "locked" in done.stderr:
            raise SystemExit(f"database is locked:\n{done.stderr}")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/storage/hpo.db")
        study = optuna.load_study(study_name="digits-nn", storage=storage)
        trials_done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        first = min(t.datetime_start for t in trials_done if t.datetime_start)
        last = max(t.datetime_complete for t in trials_done if t.datetime_complete)
        span = (last - first).total_seconds()
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials_done
            if t.datetime_complete and t.datetime_start
        ]
        train = [t.user_attrs["train_seconds"] for t in trials_done]
        # The same rate summed over the workers, each between its own first start and last
        # end: blind to one worker starting a few seconds after the other.
        per_worker = []
        for worker in {t.user_attrs["worker"] for t in trials_done}:
            mine = [t for t in trials_done if t.user_attrs["worker"] == worker]
            begin = min(t.datetime_start for t in mine if t.datetime_start)
            end = max(t.datetime_complete for t in mine if t.datetime_complete)
            per_worker.append(len(mine) / max((end - begin).total_seconds(), 1e-9) * 3600)
        return {
            "workers": n_workers,
            "threads_per_worker": threads or max(1, cpus // n_workers),
            "trials": len(trials_done),
            "trials_per_hour": round(len(trials_done) / span * 3600, 1),
            "trials_per_hour_summed_over_workers": round(sum(per_worker), 1),
            "trials_span_s": round(span, 2),
            "wall_s": round(wall, 2),
            "startup_and_exit_s": round(wall - span, 2),
            "trial_s_mean": round(statistics.mean(durations), 3),
            "train_s_mean": round(statistics.mean(train), 3),
            "overhead_s_per_trial": round(statistics.mean(durations) - statistics.mean(train), 3),
            "cpu_s": round(
                (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
            ),
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="trials per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--workers", type=int, default=2, help="workers of the split run")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cpus = len(os.sched_getaffinity(0))
    split_threads = max(1, cpus // args.workers)
    # (workers, threads of a single worker): the two, and one worker on one thread,
    # which tells the gain of running trials side by side from the cost of torch's
    # intra-op threads on networks this small.
    configs: list[tuple[int, int | None]] = [(1, None), (args.workers, None), (1, 1)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        spec_path, _ = bench_spec(Path(folder), args.trials)
        for _ in range(args.repeats):
            for n, threads in configs:
                result = run_once(spec_path, n, args.trials, threads)
                print(json.dumps(result), flush=True)
                runs.append(result)

    def rate(n: int, threads: int, key: str = "trials_per_hour") -> float:
        return statistics.mean(
            r[key] for r in runs if r["workers"] == n and r["threads_per_worker"] == threads
        )

    def rates(key: str) -> dict[str, float]:
        return {
            f"1 worker x {cpus} threads": round(rate(1, cpus, key), 1),
            f"{args.workers} workers x {split_threads} threads": round(
                rate(args.workers, split_threads, key), 1
            ),
            "1 worker x 1 thread": round(rate(1, 1, key), 1),
        }

    one, split, one_thread = rate(1, cpus), rate(args.workers, split_threads), rate(1, 1)
    payload = {
        "benchmark": "workers_scaling",
        "command": " ".join(["python", "benchmarks/workers_scaling.py", *sys.argv[1:]]),
        "machine": machine(),
        "study": "studies/digits.yaml, pruner none, the same enqueued trials in every run",
        "trials_per_hour": rates("trials_per_hour"),
        "trials_per_hour_summed_over_workers": rates("trials_per_hour_summed_over_workers"),
        "speedup_vs_1_worker": round(split / one, 2),
        "speedup_vs_1_worker_1_thread": round(split / one_thread, 2),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "workers_scaling.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    print(f"{payload['trials_per_hour']}; wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
