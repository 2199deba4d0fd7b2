"""A helper process draws the next trial's params while a trial trains
(hpo.studies.sample_ahead): the same draws TPE makes in process, seeded alike, and a
worker that goes on without it when it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing.connection import Connection

import optuna
import pytest
from helpers import REPO, mixed_space
from optuna.trial import TrialState

from hpo.spec import load_spec
from hpo.studies import fast_tpe
from hpo.studies.fast_tpe import FastTPESampler
from hpo.studies.sample_ahead import DrawAhead, _Next
from hpo.studies.search_space import suggest

TPE = {"multivariate": True, "constant_liar": True}


def objective(trial: optuna.Trial) -> float:
    """The mixed space, with user attrs (which the helper is not sent), a curve (for the
    pruned trials' scores) and a pruned trial in four."""
    value = mixed_space(trial)
    trial.set_user_attr("note", trial.number)
    for step in range(3):
        trial.report(value / (step + 1), step)
    if trial.number % 4 == 3:
        raise optuna.TrialPruned
    return value


@pytest.fixture
def draw_ahead_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw ahead from the 15th finished trial, not the 50th: short studies use it too."""
    monkeypatch.setattr(fast_tpe, "AHEAD_START", 12)
    monkeypatch.setattr(fast_tpe, "AHEAD_FROM", 15)


def _study(n_trials: int, *, ahead: bool) -> tuple[optuna.Study, FastTPESampler]:
    sampler = FastTPESampler(seed=7, ahead=ahead, **TPE)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study, sampler


def test_the_helper_draws_what_tpe_draws_in_process_with_this_trial_running() -> None:
    study, _ = _study(40, ahead=False)
    running = study.ask()  # the trial that "trains" while the next one is drawn
    objective_params = {"lr": 1e-3, "depth": 2, "act": "elu", "dropout": 0.1, "width": 64}
    dists = study.trials[0].distributions
    for name, value in objective_params.items():
        study._storage.set_trial_param(
            running._trial_id, name, dists[name].to_internal_repr(value), dists[name]
        )
    space = dists
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    running_trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len(running_trials) == 1

    in_process = FastTPESampler(**TPE)
    in_process._rng.rng.seed(1234)
    expected = in_process._sample(study, _Next(), space)

    ahead = DrawAhead(TPE)
    try:
        ahead.request(running.number + 1, finished, running_trials, study.directions, space, 1234)
        drawn = ahead.take(running.number + 1, space)
    finally:
        ahead.fail()  # stops the helper
    assert drawn == expected
    assert ahead.taken == 1
    # Sent without their user attrs, which TPE does not read; the study's trials keep theirs.
    assert all(t.user_attrs == {"note": t.number} for t in study.trials if t.number < 40)


def test_a_draw_for_another_trial_or_space_is_not_taken() -> None:
    study, _ = _study(20, ahead=False)
    space = study.trials[0].distributions
    trials = study.get_trials(deepcopy=False)
    ahead = DrawAhead(TPE)
    try:
        ahead.request(20, trials, [], study.directions, space, 1)
        assert ahead.take(21, space) is None  # another worker took trial 20
        ahead.request(21, trials, [], study.directions, space, 2)
        smaller = {k: v for k, v in space.items() if k != "lr"}
        assert ahead.take(21, smaller) is None  # the space changed
        ahead.request(22, trials, [], study.directions, space, 3)
        drawn = ahead.take(22, space)  # after two replies no trial took
    finally:
        ahead.fail()
    assert drawn is not None and drawn.keys() == space.keys()
    assert ahead.taken == 1


def test_a_finished_trial_read_late_is_sent_and_drawn_from() -> None:
    """Another worker's trial may be read only after newer ones: the helper is sent each
    finished trial once, whatever its number, and draws from all it was sent."""
    study, _ = _study(30, ahead=False)
    space = study.trials[0].distributions
    trials = study.get_trials(deepcopy=False)
    ahead = DrawAhead(TPE)
    try:
        ahead.request(30, [t for t in trials if t.number != 5], [], study.directions, space, 1)
        ahead.send()
        assert ahead.take(30, space) is not None
        ahead.request(31, trials, [], study.directions, space, 2)
        assert ahead._queued is not None
        assert [t.number for t in ahead._queued.request.new] == [5]
        drawn = ahead.take(31, space)
    finally:
        ahead.fail()
    in_process = FastTPESampler(**TPE)
    in_process._rng.rng.seed(2)
    assert drawn == in_process._sample(study, _Next(), space)


def test_a_seeded_study_draws_alike_with_draws_ahead(draw_ahead_early: None) -> None:
    first, sampler = _study(45, ahead=True)
    second, _ = _study(45, ahead=True)
    inline, _ = _study(45, ahead=False)
    assert sampler.ahead is not None and sampler.ahead.taken >= 25  # trials 16 to 44 at most
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    # Drawn with the previous trial still running, as a second worker would: other draws.
    assert [t.params for t in first.trials][:16] == [t.params for t in inline.trials][:16]
    assert [t.params for t in first.trials] != [t.params for t in inline.trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in first.trials)
    sampler.ahead.fail()


def test_the_helper_starts_drawing_once_the_trials_params_are_stored(
    draw_ahead_early: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not while they are written: on a small machine its draw took the core the database
    server needed for that write."""
    space = load_spec(REPO / "studies" / "digits.yaml")[0].nn.search_space
    sampler = FastTPESampler(seed=7, ahead=True, **TPE)
    study = optuna.create_study(sampler=sampler)
    stored_when_sent: list[bool] = []
    real_send = Connection.send

    def send(self: Connection, request: object) -> None:  # the worker's pipe to its helper
        (running,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        stored_when_sent.append(running.params.keys() == type(space).model_fields.keys())
        real_send(self, request)

    monkeypatch.setattr(Connection, "send", send)
    study.optimize(lambda trial: suggest(trial, space)["learning_rate"], n_trials=30)
    assert sampler.ahead is not None and sampler.ahead.taken >= 10
    assert len(stored_when_sent) >= 10 and all(stored_when_sent)
    sampler.ahead.fail()


def test_a_dead_helper_leaves_the_worker_drawing_itself(draw_ahead_early: None) -> None:
    study, sampler = _study(25, ahead=True)
    ahead = sampler.ahead
    assert ahead is not None and ahead.taken > 0 and ahead._proc is not None
    ahead._proc.kill()
    ahead._proc.wait()
    taken = ahead.taken
    study.optimize(objective, n_trials=10)
    assert not ahead.usable and ahead.taken == taken
    assert len(study.trials) == 35
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


WORKER = textwrap.dedent(
    """
    import signal, sys
    from hpo.studies.sample_ahead import DrawAhead
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # hpo's worker would defer it
    ahead = DrawAhead({})
    ahead.start()
    print(ahead._proc.pid, flush=True)
    sys.stdin.read()  # until killed
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by init) counts as ended.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_leaves_the_helper_to_its_worker_and_it_ends_with_the_worker() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        process_group=0,  # a terminal's foreground group, as `hpo run` is in one
    )
    try:
        assert worker.stdout is not None
        helper = int(worker.stdout.readline())
        os.killpg(worker.pid, signal.SIGINT)  # Ctrl-C: to the whole foreground group
        assert not _wait_until_gone(helper, 1.0)
        worker.kill()  # kill -9: no chance to close anything
        worker.wait()
        assert _wait_until_gone(helper, 10.0)
    finally:
        worker.kill()
        worker.wait()
