"""The exported bundle: export, load, predict, and refusing bundles that are not right."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_SPEC
from helpers import copy_sqlite, raw_test_split, run_hpo, run_python
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from typer.testing import CliRunner, Result

import hpo
from hpo.cli import app
from hpo.ensemble.estimator import EnsembleClassifier, EnsembleRegressor
from hpo.ensemble.selection import build_ensemble
from hpo.errors import HpoError
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import StoredStudy


@dataclass(frozen=True)
class Tuned:
    """One tiny digits study, tuned once for this module, and its exported bundle."""

    root: Path
    db: Path
    artifacts: Path
    bundle: Path
    x_test: np.ndarray  # raw (unscaled) test rows
    in_study: np.ndarray  # the in-study ensemble's test probabilities

    def storage_args(self, db: Path | None = None, artifacts: Path | None = None) -> list[str]:
        return [
            "--storage",
            f"sqlite:///{db or self.db}",
            "--artifacts",
            str(artifacts or self.artifacts),
        ]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    root = tmp_path_factory.mktemp("tuned")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    t = Tuned(root, root / "hpo.db", root / "artifacts", root / "bundle", np.empty(0), np.empty(0))
    runner = CliRunner()
    ran = runner.invoke(app, ["run", str(spec), "-q", *t.storage_args()])
    assert ran.exit_code == 0, ran.output
    exported = runner.invoke(app, ["export", "tiny", "--out", str(t.bundle), *t.storage_args()])
    assert exported.exit_code == 0, exported.output

    stored = StoredStudy.open("tiny", open_storage(f"sqlite:///{t.db}", must_exist=True))
    report = build_ensemble(
        "tiny",
        stored.studies,
        stored.data,
        stored.spec.ensemble,
        open_artifacts(str(t.artifacts)),
    )
    in_study = report.ensemble().predict(stored.data.test.x)
    # The ensemble rebuilt here is the one `hpo run` stored: same test accuracy.
    row = next(
        r
        for r in stored.nn_study.user_attrs["ensemble"]["rows"]
        if r["name"] == "ensemble (greedy)"
    )
    assert np.mean(in_study.argmax(1) == stored.data.test.y) == pytest.approx(row["test_metric"])
    x_test = raw_test_split("digits", stored.data)
    return Tuned(t.root, t.db, t.artifacts, t.bundle, x_test, in_study)


def _copy_bundle(tuned: Tuned, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tuned.bundle, tmp_path / "bundle"))


def _one_error_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def test_bundle_has_a_manifest_and_one_file_per_member(tuned: Tuned) -> None:
    manifest = json.loads((tuned.bundle / "manifest.json").read_text())
    assert manifest["format"] == "hpo-ensemble" and manifest["format_version"] == 2
    assert manifest["task"] == "multiclass" and manifest["classes"] == list(range(10))
    assert manifest["n_features"] == 64 == len(manifest["feature_names"])
    scaler = manifest["preprocessing"]["scaler"]
    assert scaler["kind"] == "standard" and len(scaler["offset"]) == 64
    assert {"torch", "xgboost", "numpy", "safetensors", "hpo"} <= set(manifest["versions"])
    assert tuned.bundle.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0o700
    files = {p.name for p in tuned.bundle.iterdir()}
    assert files == {"manifest.json", *manifest["files"]}
    assert sum(m["weight"] for m in manifest["members"]) == pytest.approx(1.0)
    for member in manifest["members"]:
        assert set(member["metrics"]) == {"val_loss", "val_metric", "test_metric"}
        if member["kind"] == "nn":
            assert member["file"].endswith(".safetensors") and member["mlp_spec"]["layers"]
        else:
            assert member["file"].endswith(".ubj") and "max_depth" in member["params"]
    # No pickle anywhere: pickle streams start with 0x80 (protocol 2+).
    assert all(not (tuned.bundle / f).read_bytes().startswith(b"\x80") for f in files)


def test_a_fresh_process_predicts_as_the_study_did_without_the_database(
    tuned: Tuned, tmp_path: Path
) -> None:
    # Work on copies, then delete them: the bundle must need neither database nor artifacts.
    db, artifacts = tmp_path / "copy.db", tmp_path / "artifacts"
    copy_sqlite(tuned.db, db)
    shutil.copytree(tuned.artifacts, artifacts)
    bundle = tmp_path / "exported"
    exported = run_hpo(
        "export", "tiny", "--out", str(bundle), *tuned.storage_args(db, artifacts), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    db.unlink()
    shutil.rmtree(artifacts)
    assert not any(p.suffix == ".db" or p.name == "artifacts" for p in tmp_path.iterdir())

    np.save(tmp_path / "x.npy", tuned.x_test)
    script = (
        "import sys, numpy as np, hpo\n"
        "model = hpo.load_ensemble(sys.argv[1])\n"
        "np.save(sys.argv[3], model.predict_proba(np.load(sys.argv[2])))\n"
    )
    ran = run_python(["-c", script, str(bundle), "x.npy", "proba.npy"], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    proba = np.load(tmp_path / "proba.npy")
    assert proba.shape == tuned.in_study.shape
    np.testing.assert_allclose(proba, tuned.in_study, atol=1e-6, rtol=0)

    # And through the CLI: labels plus probabilities as CSV.
    predicted = run_hpo(
        "predict", str(bundle), "--input", "x.npy", "--output", "out.csv", "--proba", cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    with (tmp_path / "out.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", *[f"proba_{c}" for c in range(10)]]
    labels = np.array([int(r[0]) for r in rows[1:]])
    np.testing.assert_array_equal(labels, tuned.in_study.argmax(axis=1))
    csv_proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(csv_proba, tuned.in_study, atol=1e-6, rtol=0)
    # Rounded to 6 significant digits, not 17: each cell is written as its %.6g.
    cells = [v for r in rows[1:] for v in r[1:]]
    assert all(v == f"{float(v):.6g}" for v in cells)
    assert max(len(v.split("e")[0].replace(".", "").lstrip("0")) for v in cells) <= 6


def test_load_ensemble_follows_sklearn_conventions(tuned: Tuned) -> None:
    model = hpo.load_ensemble(tuned.bundle)
    assert isinstance(model, EnsembleClassifier)
    assert model.n_features_in_ == 64
    np.testing.assert_array_equal(model.classes_, np.arange(10))
    assert model.feature_names_in_[0] == "pixel_0_0"
    proba = model.predict_proba(tuned.x_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(tuned.x_test), proba.argmax(axis=1))
    y = tuned.in_study.argmax(axis=1)
    assert model.score(tuned.x_test, y) == 1.0

    unfitted = clone(model)
    with pytest.raises(NotFittedError):
        unfitted.predict(tuned.x_test)
    np.testing.assert_array_equal(unfitted.fit().predict(tuned.x_test), y)

    with pytest.raises(ValueError, match="X has 63 features, but this ensemble expects 64"):
        model.predict(tuned.x_test[:, :63])
    with pytest.raises(HpoError, match="NaN or infinity"):
        model.predict(np.full((1, 64), np.nan))


def test_predict_reads_csv_by_feature_name_and_idx(tuned: Tuned, tmp_path: Path) -> None:
    manifest = json.loads((tuned.bundle / "manifest.json").read_text())
    names = manifest["feature_names"]
    x = tuned.x_test[:20]
    expected = tuned.in_study[:20].argmax(axis=1)
    runner = CliRunner()

    # Columns in another order, plus the target: taken by name, target ignored.
    with (tmp_path / "named.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["target", *reversed(names)])
        writer.writerows([[7, *row[::-1]] for row in x.tolist()])
    # No feature names: columns are matched by name, so this is one Error line.
    with (tmp_path / "plain.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"c{i}" for i in range(64)] + ["target"])
        writer.writerows([[*row, 3] for row in x.tolist()])
    # IDX: 20 images of 8x8 unsigned bytes, flattened like the study's images.
    header = bytes([0, 0, 0x08, 3]) + np.array([20, 8, 8], ">u4").tobytes()
    (tmp_path / "images-idx3-ubyte").write_bytes(header + x.astype(np.uint8).tobytes())

    refused = runner.invoke(
        app, ["predict", str(tuned.bundle), "--input", str(tmp_path / "plain.csv")]
    )
    _one_error_line(refused, "the input has no column", repr(names[0]))
    for name in ("named.csv", "images-idx3-ubyte"):
        result = runner.invoke(app, ["predict", str(tuned.bundle), "--input", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0] == "label"
        np.testing.assert_array_equal([int(v) for v in lines[1:]], expected, err_msg=name)


def test_predict_refuses_input_of_the_wrong_width(
    tuned: Tuned, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    np.save(tmp_path / "narrow.npy", tuned.x_test[:, :63])
    result = cli("predict", tuned.bundle, "--input", tmp_path / "narrow.npy")
    _one_error_line(result, "X has 63 features, but this ensemble expects 64")


def test_predict_refuses_a_changed_member_file(
    tuned: Tuned, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    bundle = _copy_bundle(tuned, tmp_path)
    np.save(tmp_path / "x.npy", tuned.x_test)
    for member in sorted(bundle.glob("*.safetensors"))[:1] + sorted(bundle.glob("*.ubj"))[:1]:
        original = member.read_bytes()
        member.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = cli("predict", bundle, "--input", tmp_path / "x.npy")
        _one_error_line(result, member.name, "checksum mismatch")
        member.write_bytes(original)
    assert cli("predict", bundle, "--input", tmp_path / "x.npy").exit_code == 0


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda text: text[: len(text) // 2], ("malformed manifest", "not JSON")),
        (lambda text: "[]", ("malformed manifest",)),
        (
            lambda text: json.dumps(
                {k: v for k, v in json.loads(text).items() if k != "preprocessing"}
            ),
            ("malformed manifest", "preprocessing"),
        ),
        (
            lambda text: json.dumps(json.loads(text) | {"n_features": "many"}),
            ("malformed manifest", "n_features"),
        ),
        (
            lambda text: json.dumps(
                json.loads(text)
                | {"members": [m | {"file": "../x"} for m in json.loads(text)["members"]]}
            ),
            ("malformed manifest", "members.0.file"),
        ),
        (
            lambda text: json.dumps(json.loads(text) | {"format_version": 3}),
            ("unknown bundle format version 3", "reads version 2"),
        ),
    ],
    ids=["truncated", "not-a-mapping", "missing-key", "wrong-type", "path-escape", "version-3"],
)
def test_predict_refuses_a_malformed_manifest_or_an_unknown_version(
    tuned: Tuned,
    tmp_path: Path,
    cli: Callable[..., Result],
    damage: Callable[[str], str],
    fragments: tuple[str, ...],
) -> None:
    bundle = _copy_bundle(tuned, tmp_path)
    manifest = bundle / "manifest.json"
    manifest.write_text(damage(manifest.read_text()))
    np.save(tmp_path / "x.npy", tuned.x_test)
    _one_error_line(cli("predict", bundle, "--input", tmp_path / "x.npy"), *fragments)
    with pytest.raises(HpoError):
        hpo.load_ensemble(bundle)


def test_predict_on_a_missing_bundle_or_input(
    tuned: Tuned, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    np.save(tmp_path / "x.npy", tuned.x_test)
    _one_error_line(cli("predict", tmp_path / "none", "--input", tmp_path / "x.npy"), "no such")
    _one_error_line(cli("predict", tuned.bundle, "--input", tmp_path / "y.npy"), "no such input")
    (tmp_path / "x.txt").write_text("hello")
    _one_error_line(cli("predict", tuned.bundle, "--input", tmp_path / "x.txt"), "not a table")


def test_export_refuses_to_overwrite_unless_forced(
    tuned: Tuned, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["export", "tiny", "--out", out, *tuned.storage_args()]
    _one_error_line(cli(*args), "is not empty")
    _one_error_line(cli(*args, "--force"), "no manifest.json")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    (out / "notes.txt").unlink()
    assert cli(*args).exit_code == 0  # an empty folder is fine
    assert cli(*args, "--force").exit_code == 0  # a bundle is replaced (test_hostile.py: only one)
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_export_of_an_unknown_name_writes_nothing(
    tuned: Tuned, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    result = cli("export", "nope", "--out", tmp_path / "b", *tuned.storage_args())
    _one_error_line(result, "no study named 'nope'", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_study_without_finished_trials_writes_nothing(
    write_spec: Callable[..., Path], cli: Callable[..., Result], workdir: Path
) -> None:
    spec = write_spec()
    ran = cli("run", spec, "--trials", "0", "--quiet")
    assert ran.exit_code == 1
    assert ran.stderr.strip().splitlines()[-1].startswith("Error: tiny: no finished trials")
    before = sorted(p.name for p in workdir.iterdir())
    _one_error_line(cli("export", "tiny", "--out", workdir / "b"), "no finished trials")
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_export_without_a_database_writes_nothing(
    cli: Callable[..., Result], workdir: Path
) -> None:
    _one_error_line(cli("export", "tiny", "--out", workdir / "b"), "no database at")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    ("dataset", "task", "scaling"),
    [
        ("diabetes", "regression", "standard"),
        ("breast_cancer", "binary", "standard"),
        ("diabetes", "regression", "quantile"),
        ("breast_cancer", "binary", "robust"),
    ],
)
def test_regression_and_binary_bundles_predict_as_the_study(
    dataset: str,
    task: str,
    scaling: str,
    write_spec: Callable[..., Path],
    cli: Callable[..., Result],
) -> None:
    spec = write_spec(
        {
            "name": dataset.replace("_", "-"),
            "task": task,
            "data": {"name": dataset, "scaling": scaling},
            "nn": {"trials": 3, "epochs": 8},
            "gbm": {"trials": 2, "search_space": {"n_estimators": 40}},
        }
    )
    assert cli("run", spec, "--quiet").exit_code == 0
    name = dataset.replace("_", "-")
    assert cli("export", name, "--out", "bundle").exit_code == 0

    stored = StoredStudy.open(name, open_storage(must_exist=True))
    board = stored.nn_study.user_attrs["ensemble"]
    exported = next(r for r in board["rows"] if r["name"] == f"ensemble ({board['method']})")
    model = hpo.load_ensemble("bundle")
    x_test = raw_test_split(dataset, stored.data)
    if task == "regression":
        assert isinstance(model, EnsembleRegressor) and board["metric"] == "rmse"
        assert not hasattr(model, "predict_proba")
        pred = model.predict(x_test)
        rmse = float(np.sqrt(np.mean((pred - stored.data.test.y) ** 2)))
        assert rmse == pytest.approx(exported["test_metric"], rel=1e-6)
        assert 20 < rmse < 100  # in the target's units (disease progression, std ~77)
        _one_error_line(cli("predict", "bundle", "--input", "x.npy", "--proba"), "--proba")
    else:
        assert isinstance(model, EnsembleClassifier) and list(model.classes_) == [0, 1]
        proba = model.predict_proba(x_test)
        assert proba.shape == (len(x_test), 2)
        accuracy = float(np.mean(model.predict(x_test) == stored.data.test.y))
        assert accuracy == pytest.approx(exported["test_metric"])
