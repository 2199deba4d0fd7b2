"""Helpers shared by the ensemble and bundle tests."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import sklearn.datasets
from sklearn.model_selection import train_test_split

from hpo.data.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]


def raw_test_split(name: str, data: Dataset, *, seed: int = 0, test_fraction: float = 0.2):
    """The unscaled test rows of an sklearn dataset, split as ``hpo.data.dataset`` splits it.

    Checked against the study's scaled split, so a change in the split cannot go unseen.
    """
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    stratify = y if data.task != "regression" else None
    _, x_test, _, _ = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    assert np.array_equal(data.scaler.transform(x_test), data.test.x)
    return x_test


def tune_and_export(spec: Path, name: str, root: Path) -> Path:
    """``hpo run`` the spec and ``hpo export`` its ensemble to ``root/bundle``, both on a
    storage and artifact store of their own under ``root``; returns the bundle folder."""
    from typer.testing import CliRunner

    from hpo.cli import app

    storage = ["--storage", f"sqlite:///{root / 'hpo.db'}", "--artifacts", str(root / "art")]
    runner = CliRunner()
    ran = runner.invoke(app, ["run", str(spec), "-q", *storage])
    assert ran.exit_code == 0, ran.output
    out = root / "bundle"
    exported = runner.invoke(app, ["export", name, "--out", str(out), *storage])
    assert exported.exit_code == 0, exported.output
    return out


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a (WAL-mode) SQLite database."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def run_hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m hpo ...`` in a fresh process, with this checkout first on the path."""
    return run_python(["-m", "hpo", *args], cwd=cwd)


def run_python(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def mixed_space(trial: optuna.Trial) -> float:
    """An objective over a space like hpo's, for sampler tests: log and stepped floats,
    ints (one on a log scale) and a category."""
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    depth = trial.suggest_int("depth", 1, 4)
    act = trial.suggest_categorical("act", ["relu", "elu", "gelu"])
    dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.05)
    width = trial.suggest_int("width", 16, 512, log=True)
    return abs(math.log10(lr) + 3) + abs(depth - 2) + (act != "elu") + dropout + width / 500
