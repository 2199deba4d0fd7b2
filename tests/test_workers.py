"""Workers as a user starts them: `hpo worker` processes on PostgreSQL, `hpo run --workers`
on SQLite, the gRPC storage proxy, crashed and interrupted workers, bad storage URLs.

Every command of the README's "Run on several machines" section is in README_COMMANDS,
and each test runs its commands from there (with hosts, ports and paths of the test).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import PG_PASSWORD, TINY_SPEC, _merge
from optuna.trial import TrialState

from hpo.storage.backend import open_storage
from hpo.studies.workers import LocalWorkers, _Worker

REPO = Path(__file__).resolve().parent.parent

README_COMMANDS = [
    "hpo run studies/digits.yaml --workers 2",
    "psql -h db-host -U postgres -c 'CREATE DATABASE hpo_study'",
    "export HPO_STORAGE=postgresql://postgres:secret@db-host:5432/hpo_study",
    "hpo worker studies/digits.yaml --artifacts /mnt/shared/hpo-artifacts",
    "hpo studies",
    "hpo dashboard --artifacts /mnt/shared/hpo-artifacts --port 8080",
    "hpo storage-proxy --host 0.0.0.0 --port 13000",
    "hpo worker studies/digits.yaml --storage grpc://proxy-host:13000"
    " --artifacts /mnt/shared/hpo-artifacts",
]
README_URL = "postgresql://postgres:secret@db-host:5432/hpo_study"
BASELINES = [
    {"depth": 1, "width": 32, "optimizer": "adam"},
    {"depth": 2, "width": 16, "optimizer": "sgd"},
    {"depth": 1, "width": 64, "batch_size": 128},
]
# A trial that trains for a few seconds, so that a test can stop it in the middle.
SLOW = {"pruner": "none", "nn": {"epochs": 40, "patience": 40}}
# Heartbeat every second, stale after three: crashed workers are found within seconds.
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 2}


def readme_command(index: int, **subs: str) -> list[str]:
    """README_COMMANDS[index] as argv, placeholders replaced (``hpo`` is this checkout's)."""
    command = README_COMMANDS[index]
    for old, new in subs.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[0] == "hpo":
        return [sys.executable, "-m", "hpo", *argv[1:]]
    return argv


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def write(path: Path, changes: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(_merge(TINY_SPEC, changes)))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))


def done_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def assert_baselines_once(study: optuna.Study, baselines: list[dict[str, Any]]) -> None:
    for baseline in baselines:
        same = [t for t in study.trials if baseline.items() <= t.params.items()]
        assert len([t for t in same if t.user_attrs.get("baseline")]) == 1, baseline
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == len(baselines)


def assert_artifacts_present(study: optuna.Study, artifacts: Path) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        assert (artifacts / t.user_attrs["artifact_id"]).is_file(), t.number


def test_readme_commands_are_the_tested_ones() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run on several machines", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = [line.split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    joined = [c.replace(" \\", "") for c in commands]
    assert joined == [c.replace("  ", " ") for c in README_COMMANDS]


def test_readme_creates_the_database(pg_url: str) -> None:
    import psycopg

    name = f"{pg_url.rsplit('/', 1)[1]}_readme"
    argv = readme_command(1, **{"db-host": "127.0.0.1", "hpo_study": name})
    try:
        created = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class FourWorkers:
    url: str
    artifacts: Path
    outputs: list[tuple[str, str]]
    study: optuna.Study


@pytest.fixture(scope="module")
def four_workers(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FourWorkers]:
    """Four `hpo worker` processes, started together on a fresh study with baselines."""
    folder = tmp_path_factory.mktemp("four")
    spec = write(
        folder / "four.yaml",
        {
            "name": "four",
            "pruner": "none",
            "data": {"limit": 500},  # trials of a few hundredths of a second: this is
            "nn": {"trials": 40, "epochs": 1, "baselines": BASELINES},  # about the storage
        },
    )
    artifacts = folder / "shared-artifacts"
    argv = readme_command(
        3, **{"studies/digits.yaml": str(spec), "/mnt/shared/hpo-artifacts": str(artifacts)}
    )
    procs = [
        subprocess.Popen(
            argv,
            cwd=folder,
            env=env(HPO_STORAGE=pg_url),  # as the README's export line does
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    yield FourWorkers(pg_url, artifacts, outputs, load(pg_url, "four-nn"))


def test_four_workers_reach_exactly_the_target(four_workers: FourWorkers) -> None:
    study = four_workers.study
    done = done_trials(study)
    assert len(done) == 40
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == len(study.trials)
    assert_baselines_once(study, BASELINES)
    assert_artifacts_present(study, four_workers.artifacts)
    # All four took part, and each says how many trials it ran.
    ran = Counter(t.user_attrs["worker"] for t in study.trials)
    assert len(ran) == 4
    for out, err in four_workers.outputs:
        assert re.search(r"four-nn: 40/40 finished trials, \d+ run by this worker", out)
        assert PG_PASSWORD not in out + err and "postgres:***@127.0.0.1" in err


def test_studies_and_dashboard_read_the_shared_study(
    four_workers: FourWorkers, tmp_path: Path
) -> None:
    listing = subprocess.run(
        readme_command(4), env=env(HPO_STORAGE=four_workers.url), capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert "four-nn" in listing.stdout and "postgres:***@127.0.0.1" in listing.stdout
    assert PG_PASSWORD not in listing.stdout + listing.stderr

    port = free_port()
    argv = readme_command(
        5, **{"/mnt/shared/hpo-artifacts": str(four_workers.artifacts), "8080": str(port)}
    )
    dashboard = subprocess.Popen(
        argv,
        env=env(HPO_STORAGE=four_workers.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        summaries = _get_json(f"http://127.0.0.1:{port}/api/studies", dashboard)
        names = [s["study_name"] for s in summaries["study_summaries"]]
        assert "four-nn" in names
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def _get_json(url: str, server: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            assert server.poll() is None, "the dashboard exited"
            assert time.monotonic() < deadline, "the dashboard did not answer"
            time.sleep(0.3)


def test_kill_9_mid_trial_fails_it_retries_it_and_loses_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    spec = write(
        tmp_path / "crash.yaml",
        _merge(_merge(SLOW, FAST_HEARTBEAT), {"name": "crash", "nn": {"trials": 4}}),
    )
    argv = readme_command(
        3, **{"studies/digits.yaml": str(spec), "/mnt/shared/hpo-artifacts": "art"}
    )
    victim, survivor = (
        subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env(HPO_STORAGE=pg_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    )
    # Wait until the victim is in the middle of a trial: its params are stored (written
    # as it samples them), so it builds its network and trains its 40 epochs (seconds;
    # its curve and attrs are written in batches every 2 s, so need not be stored yet).
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the victim never got to train"
        running = _running_trials_of(pg_url, "crash-nn", victim.pid)
        if running and running[0].params:
            break
        time.sleep(0.1)
    time.sleep(0.3)
    doomed = running[0]
    complete_before = _complete(load(pg_url, "crash-nn"))
    victim.kill()  # SIGKILL: no chance to tell the storage anything
    victim.wait()
    killed_at = time.monotonic()

    # The survivor finds the trial stale once its heartbeat is grace_period old.
    while True:
        study = load(pg_url, "crash-nn")
        trial = study.trials[doomed.number]
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == doomed.number]
        if trial.state == TrialState.FAIL and retries:
            break
        assert time.monotonic() - killed_at < 60, f"trial {doomed.number} is still {trial.state}"
        time.sleep(0.2)
    seconds = time.monotonic() - killed_at
    print(f"trial {doomed.number} FAIL with a retry {seconds:.1f} s after kill -9")

    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    study = load(pg_url, "crash-nn")
    assert len(done_trials(study)) == 4
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == doomed.number)
    assert retry.params == doomed.params and retry.state == TrialState.COMPLETE
    # No COMPLETE trial was lost or changed.
    after = _complete(study)
    assert {n: after[n] for n in complete_before} == complete_before


def _running_trials_of(url: str, name: str, pid: int) -> list[optuna.trial.FrozenTrial]:
    try:
        study = load(url, name)
    except KeyError:
        return []
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("worker", "").endswith(f":{pid}")
    ]


def _complete(study: optuna.Study) -> dict[int, tuple[Any, ...]]:
    return {
        t.number: (t.value, t.params, t.user_attrs, t.datetime_complete)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }


def test_two_workers_through_the_storage_proxy(pg_url: str, tmp_path: Path) -> None:
    port = str(free_port())
    proxy_argv = readme_command(6, **{"0.0.0.0": "127.0.0.1", "13000": port})
    proxy = subprocess.Popen(
        proxy_argv,
        env=env(HPO_STORAGE=pg_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=int(port)).wait_server_ready(
            timeout=60
        )
        # A second proxy on the same port is refused, not silently started beside it.
        again = subprocess.run(
            proxy_argv, env=env(HPO_STORAGE=pg_url), capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 1 and f"Error: cannot serve on 127.0.0.1:{port}" in again.stderr

        spec = write(
            tmp_path / "proxied.yaml",
            {"name": "proxied", "nn": {"trials": 6, "epochs": 3, "baselines": BASELINES[:2]}},
        )
        artifacts = tmp_path / "shared"
        argv = readme_command(
            7,
            **{
                "studies/digits.yaml": str(spec),
                "proxy-host": "127.0.0.1",
                "13000": port,
                "/mnt/shared/hpo-artifacts": str(artifacts),
            },
        )
        workers = [
            subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for w in workers:
            _, err = w.communicate(timeout=300)
            assert w.returncode == 0, err
    finally:
        proxy.send_signal(signal.SIGINT)
        out, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 0 and "storage proxy stopped" in err
    assert PG_PASSWORD not in out + err

    study = load(pg_url, "proxied-nn")
    # Without a heartbeat through the proxy, a worker cannot wait on running trials: the
    # last ones may both start, so the target can be passed by (workers - 1).
    assert 6 <= len(done_trials(study)) <= 7
    assert_baselines_once(study, BASELINES[:2])
    assert_artifacts_present(study, artifacts)


def test_run_workers_on_sqlite_survives_ctrl_c_and_tops_up(write_spec, workdir: Path) -> None:
    spec = write_spec(_merge(_merge(SLOW, FAST_HEARTBEAT), {"nn": {"trials": 4}}))
    argv = readme_command(0, **{"studies/digits.yaml": str(spec)})
    run = subprocess.Popen(
        argv, cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    db = workdir / "storage" / "hpo.db"
    deadline = time.monotonic() + 120
    while _states(db).get("RUNNING", 0) < 2:  # both workers in the middle of a trial
        assert time.monotonic() < deadline and run.poll() is None, run.stderr
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err and "locked" not in out + err
    states = _states(db)
    # An interrupted trial is FAIL; one that was telling its result when the signal came
    # finishes first (the write is never cut short), so 0 to 2 FAIL, never RUNNING.
    assert "RUNNING" not in states and states.get("FAIL", 0) <= 2, states

    again = subprocess.run(
        argv, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "locked" not in again.stdout + again.stderr and "Best trial #" in again.stdout
    states = _states(db)
    assert states.get("COMPLETE", 0) == 4 and "RUNNING" not in states, states


def _states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        # open_storage: its schema lock keeps this reader from racing the run to create it.
        study = optuna.load_study(study_name="tiny-nn", storage=open_storage(f"sqlite:///{db}"))
    except KeyError:
        return {}
    return dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))


BAD_URLS = [
    # (URL, what the one error line says)
    (f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:1/hpo", "postgres:***@127.0.0.1:1/hpo"),
    (f"postgresql://nobody:{PG_PASSWORD}@127.0.0.1:5432/postgres", 'role "nobody" does not exist'),
    (f"nosuchdb://u:{PG_PASSWORD}@127.0.0.1/x", "nosuchdb://u:***@127.0.0.1/x: Can't load plugin"),
    ("grpc://127.0.0.1:1", "no storage proxy answers at grpc://127.0.0.1:1"),
    ("not a url", "not a storage URL: 'not a url'"),
]


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """`hpo run --workers` turns SIGTERM into Ctrl-C; in-process, give pytest its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_bad_storage_url_is_one_masked_error_line(
    cli, write_spec, pg_url: str, keep_sigterm: None, url: str, message: str
) -> None:
    spec = write_spec()
    commands = [("worker", str(spec), "--storage", url)]
    if not url.startswith("grpc"):
        commands += [
            ("run", str(spec), "--workers", "2", "--storage", url),
            ("studies", "--storage", url),
        ]
    for args in commands:
        started = time.monotonic()
        result = cli(*args)
        # A hang guard, not a benchmark: a wrong host must not wait out a TCP timeout.
        assert time.monotonic() - started < 30, args
        assert result.exit_code == 1, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr and PG_PASSWORD not in result.output


def test_a_failing_local_worker_reports_its_own_reason_once(
    cli, write_spec, workdir: Path, keep_sigterm: None
) -> None:
    # The parent checks the spec against the storage but loads no data: the workers find
    # the missing folder, each writes its reason to its own file, the parent reports one.
    spec = write_spec({"data": {"source": "idx", "path": "missing-folder"}})
    result = cli("run", spec, "--workers", "2", "-q")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("Error: worker 0 exited with code 1: ")
    assert "data path not found" in errors[0] and errors[0].endswith("(and 1 more)")
    assert "Error: Error:" not in result.stderr and "Traceback" not in result.stderr


def test_a_ctrl_c_dropped_in_a_finalizer_still_stops_the_workers(tmp_path: Path) -> None:
    """Python drops a KeyboardInterrupt raised in a weakref callback (with a traceback on
    stderr); the run waiting for its workers raises it at its next poll, stopping them."""
    pool = LocalWorkers(tmp_path / "spec.yaml", 1, storage_url="sqlite:///unused.db")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    pool.workers = [_Worker(0, sleeper, tmp_path / "failure")]

    class Dropped:  # collected inside on_poll, as the study reads of the progress watcher are
        pass

    def interrupted_in_a_callback(ref: object) -> None:
        raise KeyboardInterrupt

    keep: list[Any] = []

    def on_poll() -> None:
        dropped = Dropped()
        keep.append(weakref.ref(dropped, interrupted_in_a_callback))
        del dropped  # the callback runs, raises, and Python drops what it raised

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.wait(on_poll)
    assert sleeper.poll() is not None and time.monotonic() - started < 30
