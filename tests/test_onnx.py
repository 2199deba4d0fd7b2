"""``hpo export --format onnx``: one graph that predicts as the native bundle does, refused
when changed, and served by a slim install (onnxruntime and numpy, no torch)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import yaml
from conftest import TINY_SPEC
from typer.testing import CliRunner

import hpo
from hpo.cli import app
from hpo.ensemble.onnx_runtime import OnnxEnsemble

REPO = Path(__file__).resolve().parents[1]
SLIM_SET = ["onnxruntime", "numpy", "typer"]

# Fewer, shorter trials than TINY_SPEC; "average" keeps NN and XGBoost members in the graph.
FAST = {
    "nn": {"trials": 2, "epochs": 4},
    "gbm": {"trials": 2},
    "ensemble": {"method": "average", "nn_members": 1, "gbm_members": 1},
}


def _table(path: Path) -> pd.DataFrame:
    """A numeric table with missing values in two columns (imputed, with indicators)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    label = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(int)
    df = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    df.loc[rng.random(300) < 0.2, "a"] = np.nan
    df.loc[rng.random(300) < 0.1, "c"] = np.nan
    df["label"] = label
    df.to_csv(path, index=False)
    return df.drop(columns="label")


def _mixed(path: Path) -> pd.DataFrame:
    """Numbers with gaps, a one-hot text column and an embedded one (30 levels), with gaps."""
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
            "city": rng.choice([f"c{i}" for i in range(30)], n),
            "b": rng.normal(size=n),
        }
    )
    good = df["city"].isin([f"c{i}" for i in range(0, 30, 2)])
    df["label"] = ((df["a"] > 0) ^ good ^ (df["color"] == "red")).astype(int)
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    df.loc[rng.random(n) < 0.1, "color"] = np.nan
    df.loc[rng.random(n) < 0.05, "city"] = np.nan
    df.to_csv(path, index=False)
    x = df.drop(columns="label")
    x.loc[:4, "city"] = "never-seen"  # an unseen level
    return x


CASES: dict[str, tuple[str, dict]] = {
    "digits": ("multiclass", {"source": "sklearn", "name": "digits"}),
    "breast_cancer": ("binary", {"source": "sklearn", "name": "breast_cancer"}),
    "diabetes": ("regression", {"source": "sklearn", "name": "diabetes"}),
    "table": ("binary", {"source": "csv", "path": "table.csv", "target": "label"}),
    "mixed": ("binary", {"source": "csv", "path": "mixed.csv", "target": "label"}),
    "table_robust": (
        "binary",
        {"source": "csv", "path": "table_robust.csv", "target": "label", "scaling": "robust"},
    ),
    "diabetes_quantile": (
        "regression",
        {"source": "sklearn", "name": "diabetes", "scaling": "quantile"},
    ),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, object]]:
    """Tune and export one case on first use: its ONNX bundle and its raw feature rows."""
    root = tmp_path_factory.mktemp("onnx")
    made: dict[str, tuple[Path, object]] = {}

    def get(case: str) -> tuple[Path, object]:
        if case in made:
            return made[case]
        task, data = CASES[case]
        spec = copy.deepcopy(TINY_SPEC) | {"name": case, "task": task, "data": data}
        for key, value in FAST.items():
            spec[key] = spec[key] | value
        if task == "regression":
            spec["metric"] = "rmse"
        x: object
        if data["source"] == "csv":
            x = (_mixed if case == "mixed" else _table)(root / data["path"])
        else:
            x = getattr(sklearn.datasets, f"load_{data['name']}")(as_frame=True).data
        (root / f"{case}.yaml").write_text(yaml.safe_dump(spec))
        storage = ["--storage", f"sqlite:///{root / 'hpo.db'}", "--artifacts", str(root / "a")]
        runner = CliRunner()
        cwd = os.getcwd()
        os.chdir(root)
        try:
            ran = runner.invoke(app, ["run", f"{case}.yaml", "-q", *storage])
            assert ran.exit_code == 0, ran.output
            bundle = root / f"bundle-{case}"
            args = ["export", case, "--out", str(bundle), "--format", "onnx", *storage]
            exported = runner.invoke(app, args)
            assert exported.exit_code == 0, exported.output
        finally:
            os.chdir(cwd)
        made[case] = (bundle, x)
        return made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_predicts_as_the_native_bundle(case: str, bundles: Callable) -> None:
    bundle, x = bundles(case)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "model.onnx" in manifest["files"]
    assert {m["kind"] for m in manifest["members"]} == {"nn", "gbm"}
    native = hpo.load_ensemble(bundle, engine="native")
    graph = hpo.load_ensemble(bundle, engine="onnx")
    assert isinstance(graph, OnnxEnsemble)
    if CASES[case][0] == "regression":
        want, got = native.predict(x), graph.predict(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        return
    want, got = native.predict_proba(x), graph.predict_proba(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.array_equal(graph.predict(x), native.predict(x))


@pytest.mark.parametrize("case", ["table", "mixed"])
def test_cli_predict_onnx_matches_native(case: str, bundles: Callable, tmp_path: Path) -> None:
    bundle, x = bundles(case)
    x.to_csv(tmp_path / "x.csv", index=False)
    runner = CliRunner()
    outputs = {}
    for engine in ("native", "onnx"):
        out = tmp_path / f"{engine}.csv"
        args = ["predict", str(bundle), "--input", str(tmp_path / "x.csv"), "--proba"]
        result = runner.invoke(app, [*args, "--output", str(out), "--engine", engine])
        assert result.exit_code == 0, result.output
        outputs[engine] = pd.read_csv(out)
    assert len(outputs["onnx"]) == len(x)
    assert outputs["onnx"]["label"].equals(outputs["native"]["label"])
    np.testing.assert_allclose(outputs["onnx"].to_numpy(), outputs["native"].to_numpy(), atol=1e-5)


def _rewrite_manifest(bundle: Path) -> None:
    """Record model.onnx's current sha256 and size, as a careful forger would."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    raw = (bundle / "model.onnx").read_bytes()
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", ["tampered", "swapped"])
def test_changed_model_onnx_is_refused(change: str, bundles: Callable, tmp_path: Path) -> None:
    source, _ = bundles("breast_cancer")
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    if change == "tampered":
        raw = bytearray((bundle / "model.onnx").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (bundle / "model.onnx").write_bytes(bytes(raw))
        expected = "checksum mismatch"
    else:  # another export's graph, with a manifest that records its checksum
        other, _ = bundles("table")
        shutil.copy(other / "model.onnx", bundle / "model.onnx")
        _rewrite_manifest(bundle)
        expected = "other members than the manifest lists"
    pd.DataFrame(np.zeros((2, 30))).to_csv(tmp_path / "x.csv", index=False)
    result = CliRunner().invoke(
        app, ["predict", str(bundle), "--input", str(tmp_path / "x.csv"), "--engine", "onnx"]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], lines


def test_predict_onnx_does_not_import_the_training_stack(bundles: Callable, tmp_path: Path) -> None:
    bundle, x = bundles("digits")
    x.iloc[:20].to_csv(tmp_path / "x.csv", index=False)
    check = (
        "import sys; sys.argv = ['hpo', 'predict', sys.argv[1], '--input', sys.argv[2], "
        "'--engine', 'onnx']\n"
        "from hpo.onnx_cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'xgboost', 'optuna', 'sklearn', 'pandas'} & set(sys.modules)\n"
        "print('HEAVY', sorted(heavy), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", check, str(bundle), str(tmp_path / "x.csv")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "HEAVY []" in done.stderr, done.stderr
    assert len(done.stdout.splitlines()) == 21  # header and 20 labels


def test_slim_venv_predicts_without_torch(bundles: Callable, tmp_path: Path) -> None:
    """A new virtualenv with only the slim set from the package index, and hpo --no-deps."""
    bundle, x = bundles("breast_cancer")
    x.iloc[:25].to_csv(tmp_path / "x.csv", index=False)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for args in (SLIM_SET, ["--no-deps", str(REPO)]):
        done = subprocess.run([*pip, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; print([m for m in ('torch', 'xgboost', "
         "'sklearn', 'optuna', 'pandas') if u.find_spec(m)])"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", probe
    done = subprocess.run(
        [str(venv / "bin" / "hpo"), "predict", str(bundle), "--input", str(tmp_path / "x.csv")],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    labels = [int(v) for v in done.stdout.split()[1:]]
    want = hpo.load_ensemble(bundle, engine="native").predict(x.iloc[:25])
    assert labels == want.tolist()


def test_onnx_export_refuses_an_unknown_format(bundles: Callable, tmp_path: Path) -> None:
    bundle, _ = bundles("table")
    root = bundle.parent  # the module's storage, where the study was tuned
    storage = ["--storage", f"sqlite:///{root / 'hpo.db'}", "--artifacts", str(root / "a")]
    os.chdir(root)
    result = CliRunner().invoke(
        app, ["export", "table", "--out", str(tmp_path / "b"), "--format", "pmml", *storage]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown export format 'pmml'" in lines[0], lines
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_onnx_engine_on_a_bundle_without_model_onnx(bundles: Callable, tmp_path: Path) -> None:
    source, x = bundles("digits")
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "model.onnx").unlink()
    x.iloc[:3].to_csv(tmp_path / "x.csv", index=False)
    runner = CliRunner()
    args = ["predict", str(bundle), "--input", str(tmp_path / "x.csv")]
    result = runner.invoke(app, [*args, "--engine", "onnx"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "--format onnx" in result.stderr
    assert runner.invoke(app, [*args, "--engine", "native"]).exit_code == 0
