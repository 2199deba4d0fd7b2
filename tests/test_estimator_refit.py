"""Honest refits: the exported estimator's ``fit(X, y)`` trains its members again on X.

The strongest check: refitted on the study's own training rows, every member predicts
exactly as the exported one, so the recipe in the manifest is complete; refitted on other
rows, cross-validation scores the ensemble as its held-out test split does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import yaml
from conftest import TINY_SPEC
from helpers import tune_and_export
from sklearn.base import clone
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split

import hpo
from hpo.ensemble.estimator import EnsembleClassifier, EnsembleRegressor
from hpo.errors import HpoError, InputError


@dataclass(frozen=True)
class Exported:
    bundle: Path
    x: np.ndarray  # all raw rows of the sklearn dataset
    y: np.ndarray
    train: np.ndarray  # the study's training rows (as hpo.data.dataset splits them)
    test: np.ndarray  # its held-out test rows


def _export(
    root: Path,
    name: str,
    task: str,
    space: dict[str, Any] | None = None,
    ensemble: dict[str, Any] | None = None,
    **nn: Any,
) -> Exported:
    spec = {**TINY_SPEC, "task": task, "data": {**TINY_SPEC["data"], "name": name}}
    spec["ensemble"] = {**TINY_SPEC["ensemble"], **(ensemble or {})}
    if space or nn:
        tiny = TINY_SPEC["nn"]
        spec["nn"] = {**tiny, **nn, "search_space": {**tiny["search_space"], **(space or {})}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    bundle = tune_and_export(root / "spec.yaml", "tiny", root)
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    strata = y if task != "regression" else None
    rows, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=strata)
    strata = y[rows] if task != "regression" else None
    train, _ = train_test_split(rows, test_size=0.25, random_state=0, stratify=strata)
    return Exported(bundle, x, y, train, test)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(tmp_path_factory.mktemp("digits"), "digits", "multiclass")


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(tmp_path_factory.mktemp("diabetes"), "diabetes", "regression")


def _member_predictions(model: Any, x: Any) -> list[np.ndarray]:
    views = model.preprocessor_.transform(x)
    return [m.predict(views[m.kind]) for m in model.members_]


def test_refit_on_the_studys_training_rows_reproduces_every_member(digits: Exported) -> None:
    model = hpo.load_ensemble(digits.bundle)
    refit = clone(model).fit(digits.x[digits.train], digits.y[digits.train])
    assert refit is not model and refit.path == model.path
    assert {m.kind for m in refit.members_} == {"nn", "gbm"}
    rows = digits.x[digits.test]
    for trained, again in zip(
        _member_predictions(model, rows), _member_predictions(refit, rows), strict=True
    ):
        np.testing.assert_array_equal(trained, again)
    np.testing.assert_array_equal(refit.weights_, model.weights_)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_refit_replays_the_schedule_smoothing_and_heads_of_each_member(
    schedule: str, tmp_path: Path
) -> None:
    """A cosine runs over the study's epochs, not the shorter refit; a plateau schedule's
    rates are replayed; label smoothing and k heads train as in the trial."""
    space = {"lr_schedule": schedule, "label_smoothing": 0.1, "heads": 2, "optimizer": "adamw"}
    # Many epochs: early stopping ends trials before a cosine does. A high learning rate
    # and a patience of 8 let a plateau cut the rate (after 4 flat epochs) and a trial
    # improve after it; the average ensemble keeps both NN members (greedy may drop one).
    space["learning_rate"] = {"low": 0.01, "high": 0.03, "log": True}
    exported = _export(
        tmp_path, "digits", "multiclass", space, {"method": "average"}, epochs=40, patience=8
    )
    model = hpo.load_ensemble(exported.bundle)
    recipes = [m.refit for m in model.manifest_.members if m.kind == "nn"]
    assert all(r is not None and r.epochs is not None for r in recipes)
    if schedule == "cosine":
        assert any(r.epochs < 40 for r in recipes)  # type: ignore[union-attr,operator]
    else:
        assert any(len(set(r.learning_rates or [])) > 1 for r in recipes)  # type: ignore[union-attr]
    refit = clone(model).fit(exported.x[exported.train], exported.y[exported.train])
    rows = exported.x[exported.test]
    nn = [i for i, m in enumerate(model.members_) if m.kind == "nn"]
    assert nn
    trained, again = _member_predictions(model, rows), _member_predictions(refit, rows)
    for i in nn:
        np.testing.assert_allclose(trained[i], again[i], rtol=0, atol=1e-6)


def test_refit_on_other_rows_trains_other_members(digits: Exported) -> None:
    model = hpo.load_ensemble(digits.bundle)
    half = np.arange(0, len(digits.y), 2)
    refit = clone(model).fit(digits.x[half], digits.y[half])
    rows = digits.x[digits.test]
    for trained, again in zip(
        _member_predictions(model, rows), _member_predictions(refit, rows), strict=True
    ):
        assert np.abs(trained - again).max() > 1e-3
    np.testing.assert_array_equal(refit.weights_, model.weights_)  # the study's weights kept
    assert not np.array_equal(refit.preprocessor_.scaler.offset, model.preprocessor_.scaler.offset)
    np.testing.assert_array_equal(refit.classes_, model.classes_)
    assert refit.score(rows, digits.y[digits.test]) > 0.85
    # Seeded: the same rows train the same members.
    again = clone(model).fit(digits.x[half], digits.y[half])
    np.testing.assert_array_equal(again.predict_proba(rows), refit.predict_proba(rows))
    # fit() without X still loads the trained bundle.
    np.testing.assert_array_equal(clone(model).fit().predict_proba(rows), model.predict_proba(rows))


def test_cross_val_score_scores_rows_the_refitted_members_never_saw(digits: Exported) -> None:
    model = hpo.load_ensemble(digits.bundle)
    assert isinstance(model, EnsembleClassifier)
    manifest = json.loads((digits.bundle / "manifest.json").read_text())
    held_out = next(
        r["test_metric"]
        for r in manifest["leaderboard"]
        if r["name"] == f"ensemble ({manifest['method']})"
    )
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(model, digits.x, digits.y, cv=cv, error_score="raise")
    # The test split has 360 rows: one standard error of its accuracy is about 0.01.
    assert abs(scores.mean() - held_out) <= 0.02, (scores, held_out)
    # The trained bundle, on rows most of which it was trained on, scores higher.
    assert scores.mean() < model.score(digits.x, digits.y)


def test_regression_refit_standardizes_the_target_as_the_study(diabetes: Exported) -> None:
    model = hpo.load_ensemble(diabetes.bundle)
    assert isinstance(model, EnsembleRegressor)
    x, y = diabetes.x, diabetes.y
    refit = clone(model).fit(x[diabetes.train], y[diabetes.train])
    rows = x[diabetes.test]
    for trained, again in zip(
        _member_predictions(model, rows), _member_predictions(refit, rows), strict=True
    ):
        np.testing.assert_allclose(trained, again, rtol=1e-4, atol=1e-3)
    held_out = r2_score(y[diabetes.test], model.predict(rows))
    scores = cross_val_score(model, x, y, cv=KFold(3, shuffle=True, random_state=0))
    assert abs(scores.mean() - held_out) < 0.15, (scores, held_out)
    assert scores.mean() < model.score(x, y)
    with pytest.raises(InputError, match=r"^y contains NaN or infinity$"):
        clone(model).fit(x[:50], np.where(np.arange(50) == 3, np.nan, y[:50]))


def test_bad_x_or_y_is_one_clear_input_error(digits: Exported) -> None:
    loaded = hpo.load_ensemble(digits.bundle)
    model = clone(loaded)
    x, y = digits.x[:100], digits.y[:100]
    named = pd.DataFrame(x, columns=loaded.feature_names_in_)
    cases = [
        (x[:, :63], y, "X has 63 features, but this ensemble expects 64"),
        (x, np.full(100, 3), "y holds one class only (3): a classifier needs at least 2"),
        (x, np.where(y == 0, 11, y), "y holds the label 11, not one of this ensemble's classes"),
        (x, y[:99], "y must hold one value per row of X (100)"),
        (x, None, "fit needs both X and y"),
        (pd.DataFrame(x).add_prefix("c"), y, "the input has no column 'pixel_0_0'"),
        (np.where(x == 0, np.nan, x), y, "X contains NaN or infinity"),
        (named.mask(named == 0), y, "X contains NaN or infinity"),
    ]
    for bad_x, bad_y, message in cases:
        with pytest.raises(InputError) as e:
            model.fit(bad_x, bad_y)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_an_older_bundle_loads_and_predicts_but_cannot_be_refitted(
    digits: Exported, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(digits.bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for member in manifest["members"]:
        del member["refit"]
    del manifest["preprocessing"]["settings"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    rows = digits.x[digits.test]
    model = hpo.load_ensemble(old)
    np.testing.assert_array_equal(
        model.predict_proba(rows), hpo.load_ensemble(digits.bundle).predict_proba(rows)
    )
    with pytest.raises(HpoError) as e:
        clone(model).fit(digits.x, digits.y)
    assert str(e.value) == (
        f"{old}: this bundle cannot be refitted: it records no training recipe "
        "(exported by an older hpo); re-export it with `hpo export` to refit it"
    )


def test_a_manifest_recipe_out_of_bounds_is_refused(digits: Exported, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(digits.bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    nn = next(m for m in manifest["members"] if m["kind"] == "nn")
    nn["refit"]["epochs"] = 10**9  # a refit that would never end
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HpoError, match=r"malformed manifest: members\.\d+\.refit\.epochs"):
        hpo.load_ensemble(bad)


# --- a table with categories and missing values ------------------------------------------


def _table(n: int, seed: int) -> pd.DataFrame:
    """``label`` follows ``x`` and ``color``; ``code`` has more levels than ``max_onehot``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n).astype(object)
    df = pd.DataFrame(
        {
            "x": x.round(3),
            "color": color,
            "code": [f"c{k}" for k in rng.integers(0, 12, n)],
            "label": np.where(x + (color == "red") * 1.5 > 0.5, "yes", "no"),
        }
    )
    df.loc[::6, "x"] = np.nan
    df.loc[::11, "color"] = np.nan
    return df


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("table")
    _table(200, 0).to_csv(root / "t.csv", index=False)
    spec = {
        **TINY_SPEC,
        "task": "binary",
        "data": {"source": "csv", "path": "t.csv", "target": "label", "max_onehot": 4},
    }
    (root / "t.yaml").write_text(yaml.safe_dump(spec))
    return tune_and_export(root / "t.yaml", "tiny", root)


def test_refit_on_a_table_with_categories_and_missing_values(table: Path) -> None:
    model = hpo.load_ensemble(table)
    df = _table(300, 1)
    df.loc[df.index[:40], "color"] = "purple"  # a level the study never saw
    features, labels = df.drop(columns="label"), df["label"]
    refit = clone(model).fit(features, labels)
    pre = refit.preprocessor_
    assert [c.name for c in pre.categorical] == ["color", "code"] and pre.numeric == ["x"]
    assert "purple" in next(c for c in pre.categorical if c.name == "color").levels
    assert pre.indicators == ["x"]
    fresh = _table(200, 2)
    assert refit.score(fresh.drop(columns="label"), fresh["label"]) > 0.7
    scores = cross_val_score(model, features, labels, cv=3, error_score="raise")
    assert scores.mean() > 0.7
    with pytest.raises(InputError, match=r"^column 'x': 'tall' is not a number$"):
        clone(model).fit(features.assign(x=["tall"] + [1.0] * 299), labels)


def test_table_refit_on_the_studys_training_rows_reproduces_every_member(table: Path) -> None:
    model = hpo.load_ensemble(table)
    df = pd.read_csv(table.parent / "t.csv")
    strata = df["label"].to_numpy()
    rest, test = train_test_split(
        np.arange(len(df)), test_size=0.2, random_state=0, stratify=strata
    )
    train, _ = train_test_split(rest, test_size=0.25, random_state=0, stratify=strata[rest])
    features = df.drop(columns="label")
    refit = clone(model).fit(features.iloc[train], df["label"].iloc[train])
    assert refit.preprocessor_.to_dict() == model.preprocessor_.to_dict()
    rows = features.iloc[test]
    for trained, again in zip(
        _member_predictions(model, rows), _member_predictions(refit, rows), strict=True
    ):
        np.testing.assert_array_equal(trained, again)
