"""Optuna's own cost per trial (sampler + storage), beside no training or (``--training``) some.

    python benchmarks/optuna_overhead.py [--trials 1000] [--before /path/to/old/checkout]
                                         [--training]

Each trial is a real hpo NN trial of the digits study, run as ``hpo run`` runs it (the
worker loop, the lock, the search space, pruning by Hyperband every epoch, its user attrs
and model file), except that training is replaced by a made-up learning curve: what is
left is what a trial costs besides training. The time per trial around 100 and around
``--trials`` finished trials, and the database transactions (commits) and statements per
trial, are compared with the median trial time of the digits study (measured once, with
this checkout, for both versions); the part of that time spent in TPE's sampling calls
(the search itself) is given apart. ``--before`` measures another checkout's hpo first,
in a subprocess, so both land in one table from one machine.

``--training``: each made-up trial also trains, on one thread as a digits trial does, for
as long as the median digits trial takes (a block of matrix products); the time per trial
is then what a trial takes beyond that training: what a user waits for Optuna, with work
done beside the training (hpo draws the next trial's params in a helper process) hidden.
PostgreSQL is the server the tests use, in a fresh database dropped afterwards.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, checkout_label, fresh_postgres_database, write_result

import hpo
import hpo.storage.backend
import hpo.studies.nn
from hpo.data.dataset import load_dataset
from hpo.models.mlp import build_mlp
from hpo.models.train import TrainResult
from hpo.spec import load_spec
from hpo.storage.backend import mask_url, open_artifacts, open_storage
from hpo.studies.nn import NN, NNObjective
from hpo.studies.study import PrunerSteps, make_pruner, make_sampler, run_study
from hpo.studies.workers import quiet_optuna

SPEC = REPO / "studies" / "digits.yaml"


TRAINING_S = [0.0]  # how long each made-up trial trains (--training)
TRAINED_S = [0.0]  # how long they trained so far


def train_for(seconds: float) -> None:
    """Keep one core busy with torch's matrix products, as training would, for ``seconds``."""
    start = time.perf_counter()
    a = torch.rand(128, 128)
    while time.perf_counter() - start < seconds:
        a = torch.tanh(a @ a)
    TRAINED_S[0] += time.perf_counter() - start


def fake_train_mlp(spec: Any, data: Any, *, epochs: int, on_epoch: Any, **_: Any) -> TrainResult:
    """train_mlp's contract with a made-up falling curve that ranks by width, and no
    training but (``--training``) a busy core. Building the model is training's part, as
    in train_mlp (and in the digits trial it is compared with), not Optuna's."""
    start = time.perf_counter()
    model = build_mlp(spec, data.n_features, data.n_outputs, data.embedding_sizes)
    built_s = time.perf_counter() - start
    TRAINED_S[0] += built_s
    train_for(max(0.0, TRAINING_S[0] - built_s))
    loss = 1.0 / spec.layers[0].width
    history = []
    for epoch in range(epochs):
        history.append(loss * (1 + 1 / (epoch + 1)))
        on_epoch(epoch, history[-1])
    metrics = {"val_accuracy": 1 - loss, "test_accuracy": 1 - loss}
    return TrainResult(model, history[-1], metrics, epochs, epochs - 1, 0.0, "cpu", history)


@contextmanager
def sampler_clock(clock: list[float], tpe: type) -> Iterator[None]:
    """Add the seconds spent in the sampling calls of ``tpe`` (the spec's sampler class; its
    reads of the study included) to ``clock[0]``: the part of Optuna's cost that is the
    search itself, not bookkeeping."""
    names = ("infer_relative_search_space", "sample_relative", "sample_independent")
    originals = {name: getattr(tpe, name) for name in names}
    own = {name for name in names if name in vars(tpe)}

    def timed(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock[0] += time.perf_counter() - start

        return call

    for name, method in originals.items():
        setattr(tpe, name, timed(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            if name in own:
                setattr(tpe, name, method)
            else:
                delattr(tpe, name)  # inherited: the base's again


def measure(url: str, trials: int, windows: list[int]) -> dict[str, float]:
    spec, base = load_spec(SPEC)
    # One name for every run: Hyperband draws brackets from it, so runs prune alike.
    spec = spec.model_copy(update={"name": "overhead"})
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    storage = open_storage(
        url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period
    )
    counts: collections.Counter[str] = collections.Counter()
    # time less training, commits, statements, seconds in TPE so far, at each trial's end
    stamps: list[tuple[float, int, int, float]] = []
    sampling = [0.0]

    def stamp(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        now = time.perf_counter() - TRAINED_S[0]
        stamps.append((now, counts["commit"], counts["statement"], sampling[0]))

    engine = storage.engine
    sqlalchemy.event.listen(engine, "commit", lambda conn: counts.update(["commit"]))
    pipelined = getattr(hpo.storage.backend, "_pipelined_transaction", None)  # newer hpo only
    if pipelined is not None:
        hpo.storage.backend._pipelined_transaction = counting_commits(pipelined, counts)
    sqlalchemy.event.listen(
        engine, "before_cursor_execute", lambda *args: counts.update(["statement"])
    )
    real_train = hpo.studies.nn.train_mlp
    hpo.studies.nn.train_mlp = fake_train_mlp  # type: ignore[assignment]
    torch.set_num_threads(1)  # as hpo trains digits
    stop_counting = counting_pipelined_statements(counts)
    try:
        with (
            tempfile.TemporaryDirectory() as artifacts,
            sampler_clock(sampling, type(make_sampler(spec))),
        ):
            run_study(
                NN, spec, data, storage, open_artifacts(artifacts), n_trials=trials, on_trial=stamp
            )
    finally:
        stop_counting()
        hpo.studies.nn.train_mlp = real_train
        if pipelined is not None:
            hpo.storage.backend._pipelined_transaction = pipelined
    out: dict[str, float] = {}
    for w in windows:  # the 20 trials before the w-th finished one: median time, mean counts
        window = stamps[max(0, w - 21) : w]
        per_trial = [b[0] - a[0] for a, b in itertools.pairwise(window)]
        n = len(window) - 1
        out[f"ms_per_trial_at_{w}"] = round(1000 * statistics.median(per_trial), 2)
        out[f"commits_per_trial_at_{w}"] = round((window[-1][1] - window[0][1]) / n, 1)
        out[f"statements_per_trial_at_{w}"] = round((window[-1][2] - window[0][2]) / n, 1)
        out[f"sampler_ms_per_trial_at_{w}"] = round(1000 * (window[-1][3] - window[0][3]) / n, 2)
    states = collections.Counter(
        t.state.name
        for t in optuna.load_study(study_name=f"{spec.name}-nn", storage=storage).trials
    )
    out["pruned_share"] = round(states["PRUNED"] / sum(states.values()), 3)
    return out


def counting_commits(pipelined: Any, counts: collections.Counter[str]) -> Any:
    """hpo's pipelined PostgreSQL transaction, counted: it sends its COMMIT itself, which
    SQLAlchemy's commit event does not see."""

    @contextmanager
    def counted(conn: sqlalchemy.Connection) -> Iterator[None]:
        with pipelined(conn):
            yield
        counts.update(["commit"])

    return counted


def counting_pipelined_statements(counts: collections.Counter[str]) -> Any:
    """Count the statements newer hpo sends through psycopg itself, past SQLAlchemy's
    events (in its pipelined PostgreSQL transactions, or alone), as SQLAlchemy's are
    counted; the BEGIN and COMMIT around them are not, as SQLAlchemy's own are not, but a
    write sent alone in autocommit is its own transaction, and counts as a commit.
    Returns the undo."""
    try:
        import psycopg
    except ImportError:
        return lambda: None
    execute = psycopg.Connection.execute

    def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if query not in ("BEGIN", "COMMIT", "ROLLBACK"):
            counts.update(["statement"])
            if self.autocommit and self._pipeline is None:
                counts.update(["commit"])  # hpo's one-statement write
        return execute(self, query, *args, **kwargs)

    psycopg.Connection.execute = counted  # type: ignore[method-assign]
    return lambda: setattr(psycopg.Connection, "execute", execute)


def digits_median_trial_s() -> float:
    """Median wall time of real digits trials (train + Optuna), from a short run."""
    spec, base = load_spec(SPEC)
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(
            # The study's own name, as `hpo run` names it: Hyperband's brackets, and so how
            # long trials train before they are pruned, hash it. A new random name each
            # time (Optuna's default) made this median anything from 71 to 459 ms.
            study_name=NN.study_name(spec),
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(spec),
            pruner=make_pruner(spec, PrunerSteps(spec.nn.epochs)),
        )
        study.optimize(NNObjective(spec, data, open_artifacts(tmp)), n_trials=20)
    durations = [t.duration.total_seconds() for t in study.trials if t.duration]
    return statistics.median(durations)


@contextmanager
def postgres_database(server: str | None) -> Iterator[str]:
    """The URL given, or a new database on the tests' server, dropped at the end."""
    if server:
        yield server
        return
    with fresh_postgres_database("hpo_bench") as url:
        yield url


def measure_all(trials: int, postgres: str | None, trial_s: float) -> dict[str, Any]:
    """Both storages for the hpo that ``import hpo`` finds; shares of a ``trial_s`` trial."""
    windows = [100, trials]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database(postgres) as pg:
        for name, url in (("sqlite", f"sqlite:///{tmp}/overhead.db"), ("postgresql", pg)):
            row: dict[str, Any] = {"storage": name, "url": mask_url(url)}
            row |= measure(url, trials, windows)
            for w in windows:
                row[f"share_of_digits_trial_at_{w}"] = round(
                    row[f"ms_per_trial_at_{w}"] / 1000 / trial_s, 4
                )
            print(row)
            rows.append(row)
    return {"digits_median_trial_ms": round(trial_s * 1000, 1), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a fresh database)")
    parser.add_argument("--before", type=Path, help="another checkout to measure first")
    parser.add_argument(
        "--training", action="store_true", help="each trial trains as long as a digits trial"
    )
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)  # for --before
    parser.add_argument("--trial-ms", type=float, help=argparse.SUPPRESS)  # for --before
    args = parser.parse_args()
    quiet_optuna()  # as every hpo command does
    # One digits trial for every share: its median over 20 trials varies by tens of ms from
    # one measurement to the next on a shared machine (71 to 201 ms seen), which would move
    # a version's share more than its own change did.
    trial_s = args.trial_ms / 1000 if args.trial_ms else digits_median_trial_s()
    print(f"{hpo.__file__}: digits median trial {trial_s * 1000:.0f} ms")
    if args.training:
        TRAINING_S[0] = trial_s
    runs = []
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "before.json"
            command = [sys.executable, __file__, "--trials", str(args.trials)]
            command += ["--trial-ms", str(trial_s * 1000)]
            command += ["--training"] if args.training else []
            command += ["--json-out"]
            if args.postgres:
                command += ["--postgres", args.postgres]
            env = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
            subprocess.run([*command, str(out)], env=env, check=True)
            runs.append(
                {"hpo": checkout_label(args.before.resolve()), **json.loads(out.read_text())}
            )
    now = measure_all(args.trials, args.postgres, trial_s)
    if args.json_out:
        args.json_out.write_text(json.dumps(now))
        return
    runs.append({"hpo": checkout_label(Path(hpo.__file__).resolve().parent.parent), **now})
    name = "optuna_overhead_training" if args.training else "optuna_overhead"
    write_result(name, {"trials": args.trials, "beside_training": args.training, "runs": runs})


if __name__ == "__main__":
    main()
