"""Tables as users have them: each wart of a real CSV on its own, then one tiny study on a
table through ``hpo run``, ``hpo export`` and ``hpo predict`` / ``hpo.load_ensemble``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_SPEC
from helpers import tune_and_export
from typer.testing import CliRunner, Result

import hpo
from hpo.cli import app
from hpo.data.dataset import load_dataset
from hpo.data.preprocess import Preprocessor
from hpo.data.tables import Dialect, read_table
from hpo.ensemble.selection import build_ensemble
from hpo.errors import InputError
from hpo.spec import DataSpec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import StoredStudy


def _table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A small table with signal: ``label`` follows ``x`` and ``color``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x + (color == "red") * 1.5 > 0.5, "yes", "no")
    return pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + n),
            "x": x.round(3),
            "color": color,
            "code": [f"c{k}" for k in rng.integers(0, 12, n)],  # more levels than max_onehot
            "flag": rng.random(n) < 0.5,
            "label": label,
        }
    )


def _load(tmp_path: Path, name: str = "t.csv", task: str = "binary", **data: object):
    spec = DataSpec.model_validate({"source": "csv", "path": name, "target": "label", **data})
    return load_dataset(spec, task, tmp_path, 0)  # type: ignore[arg-type]


# --- each wart on its own ----------------------------------------------------------------


def test_text_nan_cells_are_missing_not_a_category(tmp_path: Path) -> None:
    df = _table().astype({"x": object})
    df.loc[::7, "x"] = "NaN"
    df.loc[::5, "color"] = "NaN"
    df.loc[3, "color"] = "NA"
    df.to_csv(tmp_path / "t.csv", index=False)
    data = _load(tmp_path, drop=["id"])
    pre = data.preprocessor
    assert "x" in pre.numeric and pre.indicators == ["x"]  # a number column with gaps
    color = next(c for c in pre.categorical if c.name == "color")
    assert color.levels == ["blue", "green", "red"]  # no "NaN" level
    assert np.isfinite(data.train.x).all()
    # XGBoost gets the gaps as NaN itself; the MLP gets the median plus an indicator.
    assert np.isnan(data.train.x_gbm).any()
    assert set(np.unique(data.train.x[:, pre.nn_feature_names.index("x__missing")])) == {0, 1}


@pytest.mark.parametrize("start", [0, 1])
def test_a_saved_pandas_index_is_dropped_with_one_line(tmp_path: Path, capsys, start) -> None:
    df = _table()
    df.index += start
    df.to_csv(tmp_path / "t.csv")  # the index as a leading unnamed column
    data = _load(tmp_path, drop=["id"])
    assert data.feature_names == ["x", "color", "code", "flag"]
    lines = capsys.readouterr().err.splitlines()
    assert sum("dropped the unnamed first column" in line for line in lines) == 1


def test_an_unnamed_column_that_is_not_an_index_is_kept(tmp_path: Path) -> None:
    df = _table()
    df.index = np.arange(len(df)) * 3
    df.to_csv(tmp_path / "t.csv")
    assert "Unnamed: 0" in _load(tmp_path).feature_names


def test_inf_cells_are_missing_with_one_warning_line(tmp_path: Path, capsys) -> None:
    text = _table().to_csv(index=False).splitlines()
    rows = [text[0]] + [
        line.replace(line.split(",")[1], "inf" if i % 9 == 0 else "-inf", 1)
        if i % 9 in (0, 4)
        else line
        for i, line in enumerate(text[1:])
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    data = _load(tmp_path, drop=["id"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "infinite" in line]
    assert len(warnings) == 1 and "column 'x': 27 infinite value(s)" in warnings[0]
    assert np.isfinite(data.train.x).all() and not np.isinf(data.train.x_gbm).any()


def test_semicolons_a_bom_and_thousands_marks(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(
        "\ufefffare;city;label\n3,750;Oslo;yes\n1,234.5;Bergen;no\n12;Oslo;yes\n".encode()
    )
    df = read_table(path, Dialect(thousands=","))  # separator sniffed from the header
    assert list(df.columns) == ["fare", "city", "label"]  # no BOM on the first name
    assert df["fare"].tolist() == [3750.0, 1234.5, 12.0]
    # The European way round: '.' for thousands, ',' for decimals.
    path.write_text("fare;label\n3.750,5;yes\n12,25;no\n")
    df = read_table(path, Dialect(sep=";", thousands=".", decimal=","))
    assert df["fare"].tolist() == [3750.5, 12.25]


def test_tabs_and_pipes_are_sniffed(tmp_path: Path) -> None:
    for sep in ("\t", "|"):
        (tmp_path / "t.csv").write_text(f"a{sep}b\n1{sep}2\n")
        assert list(read_table(tmp_path / "t.csv").columns) == ["a", "b"]


def test_true_false_columns_are_categories(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    data = _load(tmp_path, drop=["id"], max_onehot=4)
    kinds = {c.name: c for c in data.preprocessor.categorical}
    assert kinds["flag"].levels == ["False", "True"] and not kinds["flag"].embed
    assert kinds["code"].embed and data.embedding_sizes == [len(kinds["code"].levels) + 2]
    assert data.gbm_feature_types == ["q", "c", "c", "c"]
    assert data.classes == ["no", "yes"]  # a text target keeps its labels


def test_categorical_forces_a_numeric_looking_column(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    data = _load(tmp_path, categorical=["id"], max_onehot=4)
    assert "id" not in data.preprocessor.numeric
    assert [c.name for c in data.preprocessor.categorical if c.embed] == ["id", "code"]


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    _table().to_parquet(tmp_path / "t.parquet")
    data = _load(tmp_path, name="t.parquet", drop=["id"])
    assert data.feature_names == ["x", "color", "code", "flag"]


def test_rows_without_a_target_are_dropped_with_a_line(tmp_path: Path, capsys) -> None:
    df = _table()
    df.loc[:9, "label"] = ""
    df.to_csv(tmp_path / "t.csv", index=False)
    data = _load(tmp_path)
    assert len(data.train.y) + len(data.val.y) + len(data.test.y) == 110
    assert "dropped 10 row(s) whose target 'label' is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.assign(label="yes"), "needs 2 classes in the target, found 1: yes"),
        (lambda df: df.assign(color=""), "column(s) 'color' are empty in every row"),
        (lambda df: df.drop(columns="label"), "no target column 'label'"),
    ],
    ids=["one-class", "all-empty", "no-target"],
)
def test_bad_tables_are_one_error_line(cli, write_spec, workdir, change, message) -> None:
    change(_table()).to_csv(workdir / "t.csv", index=False)
    spec = write_spec(
        {"task": "binary", "data": {"source": "csv", "path": "t.csv", "target": "label"}}
    )
    result = cli("run", spec)
    _one_error_line(result, message)
    assert not (workdir / "storage").exists()


def test_an_unknown_drop_column_is_one_error_line(cli, write_spec, workdir) -> None:
    _table().to_csv(workdir / "t.csv", index=False)
    data = {"source": "csv", "path": "t.csv", "target": "label", "drop": ["ID", "id"]}
    _one_error_line(
        cli("run", write_spec({"task": "binary", "data": data})), "drop names no column 'ID'"
    )


def test_the_preprocessing_survives_json(tmp_path: Path) -> None:
    df = _table()
    df.loc[::4, "x"] = np.nan
    df.to_csv(tmp_path / "t.csv", index=False)
    data = _load(tmp_path, drop=["id"], max_onehot=4)
    again = Preprocessor.from_dict(json.loads(json.dumps(data.preprocessor.to_dict())))
    raw = pd.read_csv(tmp_path / "t.csv")
    for kind in ("nn", "gbm"):
        np.testing.assert_array_equal(
            again.transform(raw[again.feature_names])[kind],
            data.preprocessor.transform(raw[again.feature_names])[kind],
        )


def test_unseen_and_missing_categories_have_their_own_codes(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    pre = _load(tmp_path, drop=["id"], max_onehot=4).preprocessor
    rows = pd.DataFrame(
        {
            "x": [0.1, np.nan],
            "color": ["purple", None],
            "code": ["c999", None],
            "flag": [True, None],
        }
    )
    views = pre.transform(rows)
    names = pre.nn_feature_names
    nn = dict(zip(names, views["nn"].T, strict=True))
    assert nn["code__code"].tolist() == [1, 0]  # unseen, missing
    assert [nn[f"color={c}"].tolist() for c in ("blue", "green", "red")] == [[0, 0]] * 3
    assert nn["color=<missing>"].tolist() == [0, 1]
    gbm = views["gbm"]  # x, color, code, flag: XGBoost reads unseen and missing as missing
    assert np.isnan(gbm[:, 1:3]).all() and gbm[0, 3] == 1 and np.isnan(gbm[1, 3])


# --- a tiny study on a table, end to end ---------------------------------------------------


@dataclass(frozen=True)
class TableStudy:
    root: Path
    bundle: Path
    table: pd.DataFrame  # the raw training table


def _one_error_line(result: Result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code not in (0, None), result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def table_study(tmp_path_factory: pytest.TempPathFactory) -> TableStudy:
    root = tmp_path_factory.mktemp("table")
    df = _table(200)
    df.loc[::6, "x"] = np.nan
    df.loc[::11, "color"] = np.nan
    df.to_csv(root / "people.csv", sep=";", index=False)
    spec = {
        **TINY_SPEC,
        "name": "people",
        "task": "binary",
        "data": {
            "source": "csv",
            "path": "people.csv",
            "target": "label",
            "drop": ["id"],
            "max_onehot": 4,
        },
    }
    spec["nn"] = {**TINY_SPEC["nn"], "epochs": 15, "search_space": {
        **TINY_SPEC["nn"]["search_space"], "embedding_dim": {"low": 2, "high": 4}}}  # fmt: skip
    (root / "people.yaml").write_text(yaml.safe_dump(spec))
    return TableStudy(root, tune_and_export(root / "people.yaml", "people", root), df)


def test_table_study_trials_record_the_embedding_width(table_study: TableStudy) -> None:
    manifest = json.loads((table_study.bundle / "manifest.json").read_text())
    nn = [m for m in manifest["members"] if m["kind"] == "nn"]
    assert all(2 <= m["params"]["embedding_dim"] <= 4 for m in nn)
    assert manifest["preprocessing"]["read_options"]["sep"] is None
    assert manifest["classes"] == ["no", "yes"] and manifest["feature_names"] == [
        "x", "color", "code", "flag"]  # fmt: skip


def test_load_ensemble_matches_columns_by_name(table_study: TableStudy) -> None:
    model = hpo.load_ensemble(table_study.bundle)
    features = table_study.table.drop(columns=["id", "label"])
    proba = model.predict_proba(features)
    reversed_proba = model.predict_proba(features[features.columns[::-1]])
    np.testing.assert_array_equal(proba, reversed_proba)
    labels = model.predict(features)
    assert set(labels) <= {"yes", "no"}
    majority = table_study.table["label"].value_counts(normalize=True).max()
    assert np.mean(labels == table_study.table["label"].to_numpy()) > majority + 0.1


def test_load_ensemble_input_errors(table_study: TableStudy, capsys) -> None:
    model = hpo.load_ensemble(table_study.bundle)
    features = table_study.table.drop(columns=["label"])  # "id" was dropped in training
    with pytest.raises(InputError, match="the input has no column 'code'"):
        model.predict(features.drop(columns=["code"]))
    with pytest.raises(ValueError, match="category columns: pass a pandas DataFrame"):
        model.predict(np.zeros((2, 4)))
    model.predict(features.assign(extra=1))
    err = capsys.readouterr().err
    assert "ignoring column(s) not used in training: extra" in err and "id" not in err


def test_hpo_predict_on_a_new_csv(table_study: TableStudy, tmp_path: Path) -> None:
    new = pd.DataFrame(
        {
            "flag": ["True", "False", ""],
            "code": ["c3", "never-seen", "c1"],
            "color": ["purple", "", "red"],  # an unseen level, an empty cell
            "x": ["0.5", "", "3.5"],
        }
    )
    path = tmp_path / "new.csv"  # ',' where training had ';', and a BOM: both read alike
    new.to_csv(path, index=False, encoding="utf-8-sig")
    result = CliRunner().invoke(app, ["predict", str(table_study.bundle), "--input", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "label" and len(lines) == 4 and set(lines[1:]) <= {"yes", "no"}
    assert lines[3] == "yes"  # x = 3.5 and red: far on the "yes" side

    new.drop(columns=["code"]).to_csv(path, index=False)
    missing = CliRunner().invoke(app, ["predict", str(table_study.bundle), "--input", str(path)])
    _one_error_line(missing, "the input has no column 'code'")


def test_text_in_a_numeric_column_at_predict_is_one_error(table_study: TableStudy) -> None:
    model = hpo.load_ensemble(table_study.bundle)
    rows = pd.DataFrame({"x": ["1.5", "lots"], "color": "red", "code": "c1", "flag": True})
    with pytest.raises(InputError, match="column 'x': 'lots' is not a number"):
        model.predict(rows)
    assert len(model.predict(rows.assign(x=["1.5", "2"]))) == 2  # numbers as text are fine


def test_the_bundle_predicts_as_the_study_did(table_study: TableStudy) -> None:
    """JSON preprocessing and UBJSON boosters with native categories agree with the study."""
    store = open_storage(f"sqlite:///{table_study.root / 'hpo.db'}", must_exist=True)
    stored = StoredStudy.open("people", store)
    report = build_ensemble(
        "people",
        stored.studies,
        stored.data,
        stored.spec.ensemble,
        open_artifacts(str(table_study.root / "art")),
    )
    assert any(m.kind == "gbm" for m in report.members)
    features = table_study.table.drop(columns=["id", "label"])
    in_study = report.ensemble().predict(stored.data.preprocessor.transform(features))
    bundle = hpo.load_ensemble(table_study.bundle).predict_proba(features)
    np.testing.assert_allclose(bundle, in_study, atol=1e-6, rtol=0)
