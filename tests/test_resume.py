"""A study run again: top-ups that add, never replay; changed specs; stuck RUNNING trials."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sklearn.datasets
from helpers import REPO, run_hpo
from optuna.trial import FrozenTrial, TrialState

from hpo.spec import FloatRange, GBMSpace, IntRange, NNSpace
from hpo.storage.backend import open_storage
from hpo.studies.resume import space_changes

STUDIES = ("tiny-nn", "tiny-gbm")


def load(name: str, workdir: Path, db: str = "hpo.db") -> optuna.Study:
    storage = open_storage(f"sqlite:///{workdir / 'storage' / db}")
    return optuna.load_study(study_name=name, storage=storage)


def sampled(study: optuna.Study) -> list[FrozenTrial]:
    """Trials whose params the sampler drew: not enqueued baselines, not heartbeat retries."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.params and not t.user_attrs.get("baseline") and "failed_trial" not in t.system_attrs
    ]


def assert_no_replay(workdir: Path, at_least: int) -> None:
    for name in STUDIES:
        drawn = sampled(load(name, workdir))
        keys = [json.dumps(t.params, sort_keys=True) for t in drawn]
        assert len(drawn) >= at_least, name
        assert len(set(keys)) == len(keys), f"{name} repeats a parameter set: {keys}"


def snapshot(workdir: Path) -> dict[str, Any]:
    """Everything a refused run must leave as it was: studies, their attrs and trials."""
    storage = open_storage(f"sqlite:///{workdir / 'storage' / 'hpo.db'}")
    return {
        s.study_name: (s.user_attrs, [(t.number, t.state, t.params) for t in s.get_trials()])
        for s in (
            optuna.load_study(study_name=summary.study_name, storage=storage)
            for summary in optuna.get_all_study_summaries(storage)
        )
    }


def test_top_up_continues_the_search_and_a_new_study_repeats_the_first(
    cli, write_spec, workdir: Path
) -> None:
    spec = write_spec()
    assert cli("run", spec, "--trials", "5").exit_code == 0
    assert cli("run", spec, "--trials", "10").exit_code == 0
    assert_no_replay(workdir, at_least=9)
    # Same spec, new study (another database): the same first trials as the first run.
    other = f"sqlite:///{workdir / 'storage' / 'other.db'}"
    assert cli("run", spec, "--trials", "3", "--storage", other).exit_code == 0
    for name in STUDIES:
        first = [t.params for t in load(name, workdir).trials[:3]]
        assert [t.params for t in load(name, workdir, "other.db").trials] == first


def test_sigint_between_top_ups_replays_nothing(write_spec, workdir: Path) -> None:
    spec = write_spec()
    assert run_hpo("run", str(spec), "--trials", "5", "--quiet", cwd=workdir).returncode == 0
    # A top-up far beyond where it is stopped: one to 10 could finish between two looks at
    # the study on a busy machine, and Ctrl-C then landed as the process exited (-2).
    cmd = [sys.executable, "-m", "hpo", "run", str(spec), "--trials", "30", "--quiet"]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # the top-up has drawn new trials of its own
        if len(load("tiny-nn", workdir).get_trials(deepcopy=False)) >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr

    done = run_hpo("run", str(spec), "--trials", "10", "--quiet", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert_no_replay(workdir, at_least=9)


def test_a_changed_search_space_goes_on_with_members_inside_it(
    cli, write_spec, workdir: Path
) -> None:
    assert cli("run", write_spec(), "--trials", "4").exit_code == 0
    nn = load("tiny-nn", workdir)
    old_best = nn.best_trial
    best_width = old_best.params["width"]
    # A space that leaves out the best network.
    width = {"low": 16, "high": best_width - 1} if best_width > 16 else {"low": 17, "high": 64}
    narrowed = write_spec({"nn": {"search_space": {"width": width}}}, name="narrow.yaml")
    finished = nn.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))

    def inside(t: FrozenTrial) -> bool:
        return width["low"] <= t.params["width"] <= width["high"]

    result = cli("run", narrowed, "--trials", "6")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "search space changed" in line]
    assert lines == [
        f"tiny-nn: search space changed: width 16-64 log -> {width['low']}-{width['high']} log; "
        f"{sum(not inside(t) for t in finished)} of {len(finished)} finished trials lie "
        "outside it (left out of the tables and the ensemble)"
    ]
    nn = load("tiny-nn", workdir)
    new = [t for t in nn.trials if t.number >= 4]
    assert new and all(inside(t) for t in new)
    leaderboard = nn.user_attrs["ensemble"]
    members = [r["trial"] for r in leaderboard["rows"] if r["kind"] == "nn"]
    assert old_best.number not in members
    assert all(inside(nn.trials[number]) for number in members)
    left_out = sum(not inside(t) for t in nn.get_trials(states=(TrialState.COMPLETE,)))
    assert leaderboard["left_out"]["tiny-nn"] == left_out > 0
    assert f"tiny-nn {left_out}" in result.stdout  # the leaderboard's caption
    # Run again unchanged: no new line.
    again = cli("run", narrowed, "--trials", "6")
    assert "search space changed" not in again.stderr


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"data": {"name": "iris"}}, "data.name: digits -> iris"),
        ({"data": {"scaling": "minmax"}}, "data.scaling: standard -> minmax"),
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"task": "regression"}, "task: multiclass -> regression"),
    ],
)
def test_changed_data_task_or_seed_stops_and_writes_nothing(
    cli, write_spec, workdir: Path, change: dict[str, Any], keys: str
) -> None:
    assert cli("run", write_spec(), "--trials", "2").exit_code == 0
    before = snapshot(workdir)
    result = cli("run", write_spec(change, name="changed.yaml"), "--trials", "4")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("Error: tiny-nn was made with another data section")
    assert keys in result.stderr and "--fresh" in result.stderr
    worker = cli("worker", workdir / "changed.yaml", "--trials", "4")
    assert worker.exit_code == 1
    assert worker.stderr.strip().splitlines()[-1].startswith("Error: tiny-nn was made")
    assert snapshot(workdir) == before


def test_a_changed_target_column_stops(cli, write_spec, workdir: Path) -> None:
    frame = sklearn.datasets.load_iris(as_frame=True).frame
    frame["big"] = (frame["petal length (cm)"] > 4).astype(int)
    frame.to_csv(workdir / "iris.csv", index=False)
    data = {"source": "csv", "path": "iris.csv", "target": "target", "name": None}
    assert cli("run", write_spec({"data": data}), "--trials", "2").exit_code == 0
    before = snapshot(workdir)
    changed = write_spec({"data": {**data, "target": "big"}, "task": "binary"}, name="t.yaml")
    result = cli("run", changed, "--trials", "2")
    assert result.exit_code == 1 and result.stderr.startswith("Error: tiny-nn was made")
    assert "data.target: target -> big" in result.stderr
    assert snapshot(workdir) == before


def test_fresh_starts_new_studies_and_keeps_the_old(cli, write_spec, workdir: Path) -> None:
    assert cli("run", write_spec(), "--trials", "2").exit_code == 0
    old = {name: [t.params for t in load(name, workdir).trials] for name in STUDIES}
    iris = write_spec({"data": {"name": "iris"}})
    refused = cli("run", iris, "--trials", "2", "--workers", "2")  # checked before workers start
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: tiny-nn was made")
    assert len(refused.stderr.strip().splitlines()) == 1
    result = cli("run", iris, "--trials", "2", "--fresh")
    assert result.exit_code == 0, result.stderr
    assert "--fresh: the earlier studies are kept as tiny@" in result.stderr
    for name in STUDIES:
        assert load(name, workdir).user_attrs["dataset"] == "sklearn:iris"
    storage = open_storage(f"sqlite:///{workdir / 'storage' / 'hpo.db'}")
    archived = sorted(
        s.study_name for s in optuna.get_all_study_summaries(storage) if "@" in s.study_name
    )
    assert len(archived) == 2 and archived[0].endswith("-gbm") and archived[1].endswith("-nn")
    base = archived[0].removesuffix("-gbm")
    for name, kind in zip(STUDIES, ("nn", "gbm"), strict=True):
        study = optuna.load_study(study_name=f"{base}-{kind}", storage=storage)
        assert [t.params for t in study.trials] == old[name]
        assert study.user_attrs["dataset"] == "sklearn:digits"
    # The old study stays usable by its new name: its models are where they were.
    assert cli("status", base).exit_code == 0
    assert cli("ensemble", base).exit_code == 0


def test_a_met_target_says_how_to_add_trials(cli, write_spec) -> None:
    spec = write_spec()
    assert cli("run", spec, "--trials", "2").exit_code == 0
    result = cli("run", spec, "--trials", "2")
    assert result.exit_code == 0
    assert (
        "tiny-nn: 2 of 2 trials already finished; pass --trials N (or raise nn.trials) "
        "to add more" in result.stderr
    )
    assert "gbm.trials" in result.stderr
    assert "ensemble leaderboard" in result.stdout


def test_a_trial_left_running_by_optuna_ask_does_not_hang_the_run(
    write_spec, workdir: Path
) -> None:
    spec = write_spec({"heartbeat_interval": 1, "grace_period": 3})
    assert run_hpo("run", str(spec), "--trials", "1", "--quiet", cwd=workdir).returncode == 0
    url = f"sqlite:///{workdir / 'storage' / 'hpo.db'}"
    optuna_cli = Path(sys.executable).parent / "optuna"
    asked = subprocess.run(
        [str(optuna_cli), "ask", "--storage", url, "--study-name", "tiny-nn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert asked.returncode == 0, asked.stderr
    assert load("tiny-nn", workdir).trials[1].state == TrialState.RUNNING

    started = time.monotonic()
    result = run_hpo("run", str(spec), "--trials", "3", "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 90
    waiting = [line for line in result.stderr.splitlines() if "waiting for" in line]
    assert waiting == [
        "tiny-nn: waiting for trial 1, RUNNING with no heartbeat (marked FAIL once it makes "
        "no progress for 3 s)"
    ]
    assert "tiny-nn: trial 1 made no progress for 3 s and has no heartbeat" in result.stderr
    trials = load("tiny-nn", workdir).trials
    assert trials[1].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3


def test_a_crashed_workers_trial_says_how_long_the_run_waits(
    write_spec, workdir: Path, hpo_env: dict[str, str]
) -> None:
    """A trial whose worker beats, then dies (kill -9): the run says it waits for that
    heartbeat to go stale and for how long at most, then retries the trial and finishes."""
    spec = write_spec({"heartbeat_interval": 1, "grace_period": 3})
    assert run_hpo("run", str(spec), "--trials", "1", "--quiet", cwd=workdir).returncode == 0
    storage = open_storage(
        f"sqlite:///{workdir / 'storage' / 'hpo.db'}", heartbeat_interval=1, grace_period=3
    )
    crashed = optuna.load_study(study_name="tiny-nn", storage=storage).ask()
    dead = threading.Event()

    def beat() -> None:  # the worker, alive until the run has seen its trial
        while not dead.wait(0.3):
            storage.record_heartbeat(crashed._trial_id)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    cmd = [sys.executable, "-m", "hpo", "run", str(spec), "--trials", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=hpo_env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if "waiting for" in line:
            dead.set()  # kill -9: no more heartbeats
    dead.set()
    beater.join()
    assert proc.wait(timeout=120) == 0, "\n".join(lines)
    waiting = [line for line in lines if "waiting for" in line]
    assert len(waiting) == 1, lines
    assert waiting[0].startswith(
        f"tiny-nn: waiting for trial {crashed.number}, whose worker's last heartbeat was "
    )
    at_most = re.search(r"failed and retried in at most (\d+) s\)$", waiting[0])
    assert at_most is not None and int(at_most[1]) <= 3, waiting[0]
    trials = load("tiny-nn", workdir).trials
    assert trials[crashed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == crashed.number]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_space_changes_and_membership_for_both_spaces() -> None:
    old = GBMSpace()
    new = GBMSpace(max_depth=IntRange(low=2, high=4), learning_rate=FloatRange(low=0.1, high=0.1))
    assert space_changes(old, new) == [
        "max_depth 2-10 -> 2-4",
        "learning_rate 0.01-0.3 log -> 0.1",
    ]
    assert new.contains_params({"max_depth": 3, "learning_rate": 0.1, "unknown": 1})
    assert not new.contains_params({"max_depth": 5, "learning_rate": 0.1})
    assert not new.contains_params({"max_depth": 3, "learning_rate": 0.2})
    nn = NNSpace(activation=["relu"], batch_size=[64])
    assert space_changes(NNSpace(), nn)[0].startswith("activation relu,leaky_relu,")
    assert nn.contains_params({"activation": "relu", "batch_size": 64, "depth": 2})
    assert not nn.contains_params({"activation": "tanh"})
    assert not nn.contains_params({"depth": True})  # a bool is not the number 1
