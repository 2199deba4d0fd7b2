"""Ctrl-C in the middle of a run leaves the database consistent, and a rerun tops it up."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import typer

from hpo.cli import user_errors
from hpo.errors import interrupted
from hpo.storage.backend import open_storage

REPO = Path(__file__).resolve().parent.parent


def test_sigint_mid_run_then_resume(write_spec, workdir: Path) -> None:
    spec = write_spec({"pruner": "none", "nn": {"epochs": 40, "patience": 40}})
    cmd = [sys.executable, "-m", "hpo", "run", str(spec), "--trials", "4", "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    db = workdir / "storage" / "hpo.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a trial is being trained
        if db.exists() and _states(db).get("RUNNING"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    states = _states(db)
    assert "RUNNING" not in states and states.get("FAIL") == 1  # the interrupted trial

    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    states = _states(db)
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 4


def test_ctrl_c_through_exec_still_exits_130(tmp_path: Path) -> None:
    # Ctrl-C landing inside exec() (a lazy import defining a dataclass) set CPython's
    # "unhandled Ctrl-C" flag, and `python -m hpo` died of SIGINT (-2) after the message.
    (tmp_path / "interrupted_cmd.py").write_text(
        "import runpy, sys\n"
        "from hpo.cli import app, user_errors\n"
        "@app.command('boom')\n"
        "@user_errors\n"
        "def boom() -> None:\n"
        "    exec('raise KeyboardInterrupt')\n"
        "sys.argv = ['hpo', 'boom']\n"
        "runpy.run_module('hpo', run_name='__main__')  # as `python -m hpo boom`\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "interrupted_cmd"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 130, done.stderr
    assert "Interrupted" in done.stderr and "Traceback" not in done.stderr


def _states(db: Path) -> dict[str, int]:
    storage = open_storage(f"sqlite:///{db}")
    try:
        study = optuna.load_study(study_name="tiny-nn", storage=storage)
    except KeyError:
        return {}
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


class _CtrlCWhileBuilt:
    """What a Ctrl-C does when it lands while a class is built (a lazy import)."""

    def __set_name__(self, owner: type, name: str) -> None:
        raise KeyboardInterrupt


def _import_interrupted() -> None:
    type("Imported", (), {"attr": _CtrlCWhileBuilt()})


def test_a_ctrl_c_that_lands_in_a_lazy_import_is_still_a_ctrl_c(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python 3.11 wraps it in a RuntimeError ("Error calling __set_name__"): a worker hit
    it when Ctrl-C arrived while its first trial imported torch._dynamo, and printed a
    traceback. The CLI and the workers treat it as Ctrl-C: exit 130, one line."""
    with pytest.raises((RuntimeError, KeyboardInterrupt)) as e:
        _import_interrupted()
    assert interrupted(e.value)
    assert not interrupted(RuntimeError("a real error"))
    assert not interrupted(ValueError("bad", RuntimeError("nested")))
    with pytest.raises(typer.Exit) as exit_:
        user_errors(_import_interrupted)()
    assert exit_.value.exit_code == 130
    err = capsys.readouterr().err
    assert "Interrupted" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="a real error"):
        user_errors(lambda: (_ for _ in ()).throw(RuntimeError("a real error")))()
