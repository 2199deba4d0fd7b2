"""A bundle from a stranger: links, devices, FIFOs, huge or deep manifests and networks that
their weights do not back are each one ``Error:`` line, never a hang or gigabytes; and
``hpo predict`` streams large inputs chunk by chunk, with the same output as in one piece.

The hostile cases run ``hpo predict`` in a subprocess under a memory limit and a timeout
(see ``test_hostile.hpo``), so a regression fails instead of swapping or hanging.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_SPEC
from helpers import tune_and_export
from test_hostile import hpo, one_error_line
from typer.testing import Result

import hpo as hpo_lib
from hpo.ensemble import bundle as bundle_module
from hpo.ensemble.predict_files import predict_to_csv
from hpo.errors import HpoError


@dataclass(frozen=True)
class Exported:
    """A tiny digits bundle, exported once for this module, and raw rows to predict."""

    bundle: Path
    x: np.ndarray
    feature_names: list[str]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("exported")
    (root / "spec.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    out = tune_and_export(root / "spec.yaml", "tiny", root)
    names = json.loads((out / "manifest.json").read_text())["feature_names"]
    x = np.random.default_rng(0).integers(0, 17, size=(100, 64)).astype(np.float64)
    return Exported(out, x, names)


@pytest.fixture
def bundle(exported: Exported, tmp_path: Path) -> Path:
    """A copy of the bundle to damage, and ``x.npy`` beside it."""
    np.save(tmp_path / "x.npy", exported.x)
    return Path(shutil.copytree(exported.bundle, tmp_path / "bundle"))


def manifest_of(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def predict_limited(bundle: Path, tmp_path: Path, *fragments: str) -> str:
    """``hpo predict`` in a memory-limited subprocess: one Error line with ``fragments``."""
    result = hpo("predict", bundle, "--input", tmp_path / "x.npy", cwd=tmp_path, limited=True)
    assert "Traceback" not in result.stderr, result.stderr
    return one_error_line(result, *fragments)


def nn_file(bundle: Path) -> str:
    return next(m["file"] for m in manifest_of(bundle)["members"] if m["kind"] == "nn")


# --- what was seen: each one Error line, under a memory limit ------------------------------


def test_a_member_linked_to_dev_zero_is_refused(bundle: Path, tmp_path: Path) -> None:
    member = bundle / nn_file(bundle)
    member.unlink()
    member.symlink_to("/dev/zero")
    predict_limited(bundle, tmp_path, str(member), "a symbolic link", "regular files only")


def test_a_manifest_linked_to_dev_zero_is_refused(bundle: Path, tmp_path: Path) -> None:
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to("/dev/zero")
    predict_limited(bundle, tmp_path, "manifest.json", "a symbolic link")


def test_a_files_entry_linked_to_a_users_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    """With the right sha256 and size, a linked file would tell the bundle what it holds."""
    target = Path("/etc/passwd")
    raw = target.read_bytes()
    manifest = manifest_of(bundle)
    manifest["files"]["passwd"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    write_manifest(bundle, manifest)
    (bundle / "passwd").symlink_to(target)
    predict_limited(bundle, tmp_path, str(bundle / "passwd"), "a symbolic link")


def test_a_fifo_member_or_manifest_is_refused_without_blocking(
    bundle: Path, tmp_path: Path
) -> None:
    member = bundle / nn_file(bundle)
    member.unlink()
    os.mkfifo(member)
    predict_limited(bundle, tmp_path, str(member), "a FIFO")
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    predict_limited(bundle, tmp_path, "manifest.json", "a FIFO")


def test_a_declared_network_its_weights_do_not_back_is_never_built(
    bundle: Path, tmp_path: Path
) -> None:
    """Width 60000 in a bundle of less than a megabyte: refused from the safetensors header."""
    manifest = manifest_of(bundle)
    for member in manifest["members"]:
        if member["kind"] == "nn":
            for layer in member["mlp_spec"]["layers"]:
                layer["width"] = 60000
    write_manifest(bundle, manifest)
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 2**20  # 60000² floats: 14 GB
    predict_limited(bundle, tmp_path, nn_file(bundle), "declares width 60000", "refusing")


def test_a_deeply_nested_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    depth = 100_000
    text = json.dumps(manifest_of(bundle))
    (bundle / "manifest.json").write_text(
        text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    )
    predict_limited(bundle, tmp_path, "manifest.json", "nested deeper than the limit of 32")


def test_an_oversized_manifest_is_refused_before_it_is_read(bundle: Path, tmp_path: Path) -> None:
    with (bundle / "manifest.json").open("r+b") as f:
        f.truncate(64 * 2**30)  # sparse: 64 GiB on paper, nothing on disk
    predict_limited(bundle, tmp_path, "manifest.json", "above the limit of 16777216 bytes")


# --- smaller refusals, in-process ----------------------------------------------------------


def test_a_member_of_another_size_than_recorded_is_refused(bundle: Path) -> None:
    member = bundle / nn_file(bundle)
    member.write_bytes(member.read_bytes() + b"\0")
    with pytest.raises(HpoError, match="bytes, but the manifest records"):
        hpo_lib.load_ensemble(bundle)


def test_a_declared_shape_off_by_one_names_the_tensor(bundle: Path) -> None:
    manifest = manifest_of(bundle)
    member = next(m for m in manifest["members"] if m["kind"] == "nn")
    member["mlp_spec"]["layers"][0]["width"] -= 1
    write_manifest(bundle, manifest)
    with pytest.raises(HpoError, match=r"declares tensor \S+ of shape .* the file stores"):
        hpo_lib.load_ensemble(bundle)


def test_preprocessing_sizes_are_bounded(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "MAX_MODEL_INPUTS", 63)
    with pytest.raises(HpoError, match="preprocessing makes 64 model inputs, above the limit 63"):
        hpo_lib.load_ensemble(bundle)


# --- what held up: member names that leave the folder --------------------------------------


@pytest.mark.parametrize("name", ["../x.ubj", "/etc/passwd", "sub/gbm.ubj", ".hidden"])
def test_member_names_that_leave_the_folder_are_refused(
    name: str, bundle: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    manifest = manifest_of(bundle)
    old = manifest["members"][-1]["file"]
    manifest["members"][-1]["file"] = name
    manifest["files"][name] = manifest["files"].pop(old)
    write_manifest(bundle, manifest)
    one_error_line(
        cli("predict", bundle, "--input", tmp_path / "x.npy"), "malformed manifest", "file"
    )


# --- streaming predictions -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npy"])
def test_streamed_prediction_equals_prediction_in_memory(
    suffix: str, exported: Exported, tmp_path: Path
) -> None:
    """100 rows in chunks of 7: the file predicted chunk by chunk, byte for byte as the
    estimator predicts the whole array (in its blocks of the same 7 rows)."""
    model = hpo_lib.load_ensemble(exported.bundle)
    whole = model.predict_proba(exported.x)  # in one block
    model.block_rows_ = 7
    in_memory = model.predict_proba(exported.x)
    np.testing.assert_allclose(in_memory, whole, atol=1e-6, rtol=0)  # blocks: rounding only
    frame = pd.DataFrame(exported.x, columns=exported.feature_names).assign(target=1)
    path = tmp_path / f"x{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        np.save(path, exported.x)
    out = tmp_path / "out.csv"
    assert predict_to_csv(model, path, out, proba=True) == 100
    streamed = pd.read_csv(out)
    assert list(streamed.columns) == ["label", *[f"proba_{c}" for c in range(10)]]
    # exact, to the 6 significant digits the CSV writes
    rounded = np.vectorize(lambda v: float(f"{v:.6g}"))(in_memory)
    np.testing.assert_array_equal(streamed.iloc[:, 1:].to_numpy(), rounded)
    np.testing.assert_array_equal(streamed["label"], in_memory.argmax(axis=1))


def test_an_error_in_a_later_chunk_writes_nothing(exported: Exported, tmp_path: Path) -> None:
    model = hpo_lib.load_ensemble(exported.bundle)
    model.block_rows_ = 7
    frame = pd.DataFrame(exported.x, columns=exported.feature_names).astype(object)
    frame.iloc[90, 3] = "oops"
    frame.to_csv(tmp_path / "x.csv", index=False)
    out = tmp_path / "out" / "p.csv"
    with pytest.raises(HpoError, match="'oops' is not a number"):
        predict_to_csv(model, tmp_path / "x.csv", out)
    assert list(out.parent.iterdir()) == []  # no output, no temporary file


def test_a_fifo_as_predict_input_is_refused_at_once(
    exported: Exported, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    os.mkfifo(tmp_path / "x.csv")
    result = cli("predict", exported.bundle, "--input", tmp_path / "x.csv")
    one_error_line(result, "x.csv: not a regular file")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_goes_to_a_terminal_only(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = hpo_lib.load_ensemble(exported.bundle)
    model.block_rows_ = 40
    np.save(tmp_path / "x.npy", exported.x)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    predict_to_csv(model, tmp_path / "x.npy", tmp_path / "out.csv")
    assert terminal.getvalue() == "\r40 rows predicted\r80 rows predicted\r100 rows predicted\n"
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    predict_to_csv(model, tmp_path / "x.npy", tmp_path / "out.csv")
    assert piped.getvalue() == ""
