"""Many processes on one study, through the library: creation races, stale trials, threads."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.data.dataset import load_dataset
from hpo.spec import load_spec
from hpo.storage.backend import mask_text, mask_url, open_artifacts
from hpo.studies.nn import NN
from hpo.studies.parallel import INTERRUPTS
from hpo.studies.runner import open_spec_storage
from hpo.studies.study import open_study, run_study
from hpo.studies.workers import threads_per_worker, visible_gpus, worker_env


def test_threads_are_split_and_each_worker_gets_its_own_gpu() -> None:
    assert [threads_per_worker(n, cpus=16) for n in (1, 2, 3, 4, 32)] == [16, 8, 5, 4, 1]
    # No GPU, or one: CUDA_VISIBLE_DEVICES is left alone (a single GPU is shared).
    assert worker_env(1, 2, cpus=2, gpus=[]) == {"OMP_NUM_THREADS": "1"}
    assert worker_env(1, 2, cpus=2, gpus=["0"]) == {"OMP_NUM_THREADS": "1"}
    # Several: one each, round robin when the workers outnumber them.
    gpus = ["0", "1", "2", "3"]
    assigned = [worker_env(i, 4, cpus=16, gpus=gpus)["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert assigned == ["0", "1", "2", "3"]
    assigned = [worker_env(i, 6, cpus=16, gpus=["5", "7"]) for i in range(6)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in assigned] == ["5", "7", "5", "7", "5", "7"]
    assert {e["OMP_NUM_THREADS"] for e in assigned} == {"2"}
    # The GPUs a worker may hand out are the ones it may see itself.
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://bob:pw@db:5432/hpo", "postgresql://bob:***@db:5432/hpo"),
        ("postgresql+psycopg://:pw@db/hpo", "postgresql+psycopg://:***@db/hpo"),
        ("mysql://bob@db/hpo", "mysql://bob@db/hpo"),
        ("postgresql://bob@db/hpo?password=pw&sslmode=require", None),
        ("sqlite:///storage/hpo.db", "sqlite:///storage/hpo.db"),
    ],
)
def test_mask_url(url: str, masked: str | None) -> None:
    assert "pw" not in mask_url(url)
    if masked is not None:
        assert mask_url(url) == masked
    if "pw" in url:  # drivers echo the password in their own words too
        message = f"could not connect to {url}: password pw rejected"
        assert "pw" not in mask_text(message, url)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the dead worker's ask
def test_interrupts_wait_for_bookkeeping_but_stop_training_at_once() -> None:
    with INTERRUPTS.installed():
        with INTERRUPTS.deferred():  # between trials: the signal waits for a safe point
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            with pytest.raises(KeyboardInterrupt):
                INTERRUPTS.check()
        INTERRUPTS.pending = False
        with INTERRUPTS.deferred(), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C does not wait
            time.sleep(1)
        INTERRUPTS.pending = False
        with INTERRUPTS.deferred(), INTERRUPTS.deferred(False), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # training: at once
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the dead worker's ask
def test_a_stale_trial_is_failed_and_retried_when_a_worker_starts(write_spec) -> None:
    spec, base_dir = load_spec(
        write_spec({"heartbeat_interval": 1, "grace_period": 2, "pruner": "none"})
    )
    data = load_dataset(spec.data, spec.task, base_dir, spec.seed)
    storage = open_spec_storage(spec, None)
    # A worker that asked for a trial, beat once, and died.
    study = open_study(NN, spec, storage, data)
    dead = study.ask({"depth": optuna.distributions.IntDistribution(1, 2)})
    storage.record_heartbeat(dead._trial_id)
    time.sleep(spec.grace_period + 0.5)

    study = run_study(NN, spec, data, storage, open_artifacts(), n_trials=1)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params["depth"] == dead.params["depth"]
    assert retry.state == TrialState.COMPLETE and len(trials) == 2
