"""The exported ensemble: a directory with ``manifest.json`` and one file per member.

A k-fold member (``data.validation: {kfold: K}``) is written as its K fold models, each a
manifest member of its own with the member's weight divided by K and its ``fold`` number:
the weighted sum that every reader already computes is then the average of the fold
models, so loading, ``hpo predict``, the estimator and the ONNX graph need nothing new.

No pickle anywhere, so a bundle from a stranger cannot run code: NN members are
safetensors (plus their MLP spec in the manifest), GBM members XGBoost UBJSON models, the
rest JSON. The manifest holds the sha256 and byte size of every member file, and each
member's refit recipe (seed, epochs or boosting rounds, booster parameters), so the
exported estimator's ``fit(X, y)`` can train it again (:mod:`hpo.ensemble.refit`).

Loading trusts nothing it has not checked: every file is a regular file of the bundle
folder (no link, device or FIFO: see :mod:`hpo.ensemble.untrusted`) of the size the manifest
records, the manifest itself is size- and depth-limited, and each network's declared
shapes are compared with the tensor shapes in its safetensors header before a network is
built, so a small bundle cannot make the loader allocate gigabytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import optuna
import safetensors
import safetensors.torch
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpo import __version__
from hpo.data.dataset import Dataset
from hpo.data.preprocess import Preprocessor
from hpo.ensemble.selection import EnsembleReport, fold_models
from hpo.ensemble.untrusted import load_json, read_regular_file
from hpo.errors import HpoError
from hpo.models.members import MODEL_ERRORS, GBMMember, Member, NNMember, n_outputs, state_shapes
from hpo.models.metrics import MetricName
from hpo.models.mlp import MLPSpec
from hpo.spec import DataSpec, Limits, StudySpec, Task
from hpo.storage import stored
from hpo.storage.stored import StoredStudy

FORMAT = "hpo-ensemble"
FORMAT_VERSION = 2  # 2: the fitted preprocessing (tables) replaced the scaler
MANIFEST = "manifest.json"
PACKAGES = ("numpy", "torch", "safetensors", "xgboost", "optuna", "scikit-learn")

# A plain file name: no folders, no "..", so a manifest cannot point outside its bundle.
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

MANIFEST_MAX_BYTES = 16 * 2**20
MANIFEST_MAX_DEPTH = 32  # a real manifest nests 6 levels (members.0.mlp_spec.layers.0.width)
FILE_MAX_BYTES = 4 * 2**30  # one member file (the largest network a bundle may hold)
SAFETENSORS_HEADER_MAX_BYTES = 16 * 2**20
MAX_MODEL_INPUTS = 2**20  # columns of the matrix the preprocessing makes for one row


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetParams(_Strict):
    """Regression nets predict standardized targets; ``mean`` and ``std`` undo it."""

    name: str | None = None
    mean: float = 0.0
    std: float = 1.0


class BundleFile(_Strict):
    """What the manifest records of one file: checked before the file is read."""

    sha256: Sha256
    size: int = Field(ge=0, le=FILE_MAX_BYTES, description="bytes")


class MemberMetrics(_Strict):
    val_loss: float
    val_metric: float
    test_metric: float


class RefitRecipe(_Strict):
    """What it takes to train a member again on new rows (:mod:`hpo.models.refit`):
    the seed, and an MLP's epoch count (its trial's best epoch + 1) or a booster's
    parameters and the boosting rounds its trial kept (best iteration + 1)."""

    seed: int
    epochs: int | None = Field(default=None, ge=1, le=Limits().epochs)
    rounds: int | None = Field(default=None, ge=1, le=Limits().n_estimators)
    booster: dict[str, Any] | None = None  # xgb_params, without device and threads
    # An MLP's learning-rate schedule: the length a cosine runs over (the study's nn.epochs),
    # and the rate per epoch that a plateau schedule took (it needs a validation loss).
    schedule_epochs: int | None = Field(default=None, ge=1, le=Limits().epochs)
    learning_rates: list[float] | None = Field(default=None, max_length=Limits().epochs)


class ManifestMember(_Strict):
    kind: Literal["nn", "gbm"]
    trial: int = Field(ge=0)
    file: FileName
    weight: float = Field(gt=0, le=1)
    params: dict[str, Any]
    metrics: MemberMetrics
    mlp_spec: dict[str, Any] | None = None
    refit: RefitRecipe | None = None  # None: exported before refitting (cannot be refitted)
    # Of a k-fold trial: which fold model this is (weight: the trial's share / K).
    fold: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_spec(self) -> ManifestMember:
        r = self.refit
        if r is not None and self.kind == "nn" and r.epochs is None:
            raise ValueError("the refit recipe of an nn member needs epochs")
        if r is not None and self.kind == "gbm" and (r.rounds is None or r.booster is None):
            raise ValueError("the refit recipe of a gbm member needs rounds and booster")
        if self.kind == "nn":
            if self.mlp_spec is None:
                raise ValueError("an nn member needs its mlp_spec")
            try:
                MLPSpec.from_dict(self.mlp_spec)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"mlp_spec of nn#{self.trial} is not a valid MLP spec: {e}"
                ) from None
        return self


class Manifest(_Strict):
    format: Literal["hpo-ensemble"]
    format_version: Literal[2]
    name: str
    task: Task
    method: Literal["average", "greedy"]
    metric: MetricName
    classes: list[int | float | str] | None
    n_features: int = Field(ge=1, description="raw input columns")
    feature_names: list[str]
    preprocessing: dict[str, Any]  # Preprocessor.to_dict(): fitted on the training split
    target: TargetParams
    members: list[ManifestMember] = Field(min_length=1)
    leaderboard: list[dict[str, Any]]
    versions: dict[str, str]
    files: dict[FileName, BundleFile]
    created: str

    @model_validator(mode="after")
    def _check_consistent(self) -> Manifest:
        n = self.n_features
        if len(self.feature_names) != n:
            raise ValueError(f"{len(self.feature_names)} feature_names for {n} features")
        try:
            pre = Preprocessor.from_dict(self.preprocessing)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"preprocessing is not a valid fitted preprocessing: {e}") from None
        if pre.feature_names != self.feature_names:
            raise ValueError("preprocessing.feature_names differ from feature_names")
        width = len(pre.nn_feature_names)
        if width > MAX_MODEL_INPUTS:
            raise ValueError(
                f"preprocessing makes {width} model inputs, above the limit {MAX_MODEL_INPUTS}"
            )
        if self.task == "regression" and self.classes is not None:
            raise ValueError("a regression bundle has no classes")
        if self.task != "regression" and (
            self.classes is None
            or len(self.classes) < 2
            or len(set(self.classes)) != len(self.classes)
        ):
            raise ValueError("a classification bundle needs at least 2 distinct classes")
        if self.task == "binary" and len(self.classes or []) != 2:
            raise ValueError("a binary bundle needs exactly 2 classes")
        files = [m.file for m in self.members]
        if len(set(files)) != len(files):
            raise ValueError("two members share one file")
        for member in self.members:
            if member.file not in self.files:
                raise ValueError(f"member file {member.file} has no sha256 in files")
        if abs(sum(m.weight for m in self.members) - 1.0) > 1e-6:
            raise ValueError("member weights do not sum to 1")
        return self


@dataclass(frozen=True)
class LoadedBundle:
    manifest: Manifest
    members: tuple[Member, ...]
    weights: np.ndarray
    preprocessor: Preprocessor


def package_versions() -> dict[str, str]:
    versions = {"hpo": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    # xgboost-cpu installs as another distribution name, with the same module.
    versions.setdefault("xgboost", xgb.__version__)
    return versions


def target_name(data: DataSpec) -> str | None:
    """The target column a prediction input may still carry (and ``hpo predict`` ignores)."""
    return data.target or {"sklearn": "target", "idx": "label"}.get(data.source)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _member_file(member: Member, fold: int | None = None) -> tuple[str, bytes]:
    stem = f"{member.kind}-{member.trial}" + ("" if fold is None else f"-fold{fold}")
    if isinstance(member, NNMember):
        return f"{stem}.safetensors", safetensors.torch.save(member.state_dict())
    assert isinstance(member, GBMMember)
    return f"{stem}.ubj", member.to_bytes()


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse before any work: a file, or a non-empty folder (unless ``force`` on a bundle)."""
    if out.exists() and not out.is_dir():
        raise HpoError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise HpoError(f"{out} exists and is not empty (pass --force to replace a bundle)")
        _replaceable_files(out)


def _replaceable_files(out: Path) -> set[str]:
    """The names ``--force`` may delete in ``out``: its manifest and the files it lists.

    Raises:
        HpoError: ``out`` is not a bundle, or holds anything else (named): a user's notes
            in a bundle folder are never deleted with it.
    """
    try:
        manifest = read_manifest(out)
    except HpoError as e:
        raise HpoError(f"refusing to replace {out} with --force: {e}") from None
    listed = {MANIFEST, *manifest.files}
    others = sorted(
        entry.name
        for entry in out.iterdir()
        if entry.name not in listed or (entry.is_dir() and not entry.is_symlink())
    )
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise HpoError(
            f"{out} holds {shown}, which the bundle's manifest does not list; "
            "--force would delete it: move it out of the folder first"
        )
    return listed


def export_stored(
    found: StoredStudy, report: EnsembleReport, out: Path, *, force: bool, fmt: str = "bundle"
) -> Manifest:
    """``hpo export``: the ensemble of a study read back from storage, as a bundle; with
    ``fmt`` ``onnx`` plus its ``model.onnx`` (needs the onnx extra)."""
    extra: dict[str, bytes] = {}
    if fmt != "bundle":
        from hpo.ensemble.onnx_export import onnx_files

        extra = onnx_files(report, found.data, fmt)
    target = target_name(found.spec.data)
    return export_bundle(
        report, found.data, out, force=force, target=target, extra_files=extra, spec=found.spec
    )


def export_bundle(
    report: EnsembleReport,
    data: Dataset,
    out: Path,
    *,
    force: bool = False,
    target: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    spec: StudySpec | None = None,
) -> Manifest:
    """Write the report's ensemble (its own method) to ``out``; members of weight 0 are left out.

    With the study's ``spec``, each member records its refit recipe (seed, epochs or rounds,
    booster parameters), so the exported estimator's ``fit(X, y)`` can train it again.

    The bundle is written into a temporary folder beside ``out`` and renamed when complete,
    so a failed export leaves nothing behind.

    Raises:
        HpoError: ``out`` is a file, or a non-empty folder without ``force``.
    """
    check_out_dir(out, force=force)
    weights = report.weights[report.method]
    rows = {r.name: r for r in report.leaderboard.rows}
    members: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    for member, trial, weight in zip(report.members, report.trials, weights, strict=True):
        if weight <= 0:
            continue
        row = rows[f"{member.kind}#{member.trial}"]
        for model, share, fold in fold_models(member, float(weight)):
            name, raw = _member_file(model, fold)
            files[name] = raw
            members.append(
                {
                    "kind": model.kind,
                    "trial": model.trial,
                    "file": name,
                    "weight": share,
                    "params": trial.params,
                    "metrics": {
                        "val_loss": row.val_loss,
                        "val_metric": row.val_metric,
                        "test_metric": row.test_metric,
                    },
                    "mlp_spec": model.mlp_spec.to_dict() if isinstance(model, NNMember) else None,
                    **({} if fold is None else {"fold": fold}),
                    "refit": refit_recipe(model.kind, trial, spec, data, fold) if spec else None,
                }
            )
    files.update(extra_files or {})  # model.onnx (ensemble.onnx_export): checked like the others
    manifest = Manifest.model_validate(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": report.name,
            "task": data.task,
            "method": report.method,
            "metric": report.leaderboard.metric,
            "classes": data.classes,
            "n_features": len(data.feature_names),
            "feature_names": data.feature_names,
            "preprocessing": data.preprocessor.to_dict(),
            "target": {"name": target, "mean": data.y_mean, "std": data.y_std},
            "members": members,
            "leaderboard": report.leaderboard.to_json()["rows"],
            "versions": package_versions(),
            "files": {
                name: {"sha256": _sha256(raw), "size": len(raw)} for name, raw in files.items()
            },
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    written = manifest.model_dump(mode="json")
    for member in written["members"]:
        if member["fold"] is None:
            del member["fold"]  # a holdout bundle's manifest stays as earlier hpo wrote it
    files[MANIFEST] = (json.dumps(written, indent=2) + "\n").encode()
    _write_dir(out, files)
    return manifest


def refit_recipe(
    kind: str,
    trial: optuna.trial.FrozenTrial,
    spec: StudySpec,
    data: Dataset,
    fold: int | None = None,
) -> dict[str, Any] | None:
    """How to train ``trial``'s member (of a k-fold trial: its ``fold`` model) again (see
    :class:`RefitRecipe`); None when the trial does not record its best epoch or kept
    rounds (a study older than refitting). A fold model is seeded, stopped and scheduled as
    it was trained; a refit trains it on all the given rows, so the K refitted fold models
    are K seeds of one configuration, averaged."""
    attrs = trial.user_attrs

    def of_fold(key: str, fold_key: str) -> Any:
        if fold is None:
            return attrs.get(key)
        values = attrs.get(fold_key) or []
        return values[fold] if fold < len(values) else None

    seed = spec.seed + (fold or 0)
    if kind == "nn":
        best = of_fold("best_epoch", "fold_best_epochs")
        if best is None:
            return None
        return {
            "seed": seed,
            "epochs": int(best) + 1,
            "schedule_epochs": spec.nn.epochs,
            "learning_rates": of_fold(stored.LEARNING_RATES, "fold_learning_rates"),
        }
    rounds = of_fold(stored.ROUNDS_USED, "fold_rounds_used")
    if rounds is None:
        return None
    # Imported here: loading a bundle to predict needs none of the studies' machinery.
    from hpo.studies.gbm import xgb_params

    booster = xgb_params(trial.params, data, seed=seed, device="cpu", max_bin=spec.gbm.max_bin)
    booster.pop("device")  # chosen where it is refitted, like the thread count
    return {"seed": seed, "rounds": int(rounds), "booster": booster}


def _write_dir(out: Path, files: dict[str, bytes]) -> None:
    """All files into a temporary sibling folder, then one rename into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise HpoError(f"cannot write to {out.parent}: {e.strerror}") from None
    old: Path | None = None
    replaced: set[str] = set()
    try:
        for name, raw in files.items():
            (tmp / name).write_bytes(raw)
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        if out.is_dir() and any(out.iterdir()):
            # Checked again: a file may have been added while the ensemble was built.
            replaced = _replaceable_files(out)
            # --force on an existing bundle: move it aside, put the new one in, then delete.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)
        os.replace(tmp, out)  # onto a missing or empty folder
    except (OSError, HpoError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        if isinstance(e, HpoError):
            raise
        raise HpoError(f"cannot write the bundle to {out}: {e.strerror}") from None
    if old is not None:
        _remove_old_bundle(old, replaced)


def _remove_old_bundle(old: Path, names: set[str]) -> None:
    """Delete the listed files of the replaced bundle, and its folder once it is empty."""
    for name in names:
        (old / name).unlink(missing_ok=True)
    try:
        old.rmdir()
    except OSError:
        # Only a file added in the instant between the check and the swap lands here.
        left = ", ".join(sorted(entry.name for entry in old.iterdir()))
        raise HpoError(f"the bundle was written; {old} keeps {left}, added meanwhile") from None


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``manifest.json``: size, depth, format, version, then the schema.

    Raises:
        HpoError: missing, no regular file, too large or deep, not JSON, another format,
            an unknown version, or a malformed schema.
    """
    file = path / MANIFEST
    if not path.is_dir():
        raise HpoError(f"{path}: no such bundle directory")
    if not os.path.lexists(file):
        raise HpoError(f"{path}: not a bundle (no {MANIFEST})")
    raw = load_json(
        read_regular_file(file, limit=MANIFEST_MAX_BYTES),
        file,
        max_depth=MANIFEST_MAX_DEPTH,
        what="malformed manifest",
    )
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise HpoError(f"{file}: malformed manifest (not an {FORMAT} manifest)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise HpoError(
            f"{file}: unknown bundle format version {version!r} "
            f"(this hpo reads version {FORMAT_VERSION}; use the hpo that exported it)"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise HpoError(f"{file}: malformed manifest: {where}: {msg}") from None


def load_bundle(path: str | Path) -> LoadedBundle:
    """Check and load a bundle: manifest, every file's kind, size and sha256, each
    network's shapes, then the member models.

    Raises:
        HpoError: in one line, naming the file and what is wrong.
    """
    path = Path(path)
    manifest = read_manifest(path)
    raws: dict[str, bytes] = {}
    for name, recorded in manifest.files.items():
        raw = read_regular_file(path / name, limit=FILE_MAX_BYTES, exact_size=recorded.size)
        if _sha256(raw) != recorded.sha256:
            raise HpoError(
                f"{path / name}: checksum mismatch (the file changed after export); "
                "refusing to load the bundle"
            )
        raws[name] = raw  # hashed and parsed from the same bytes: no swap in between
    pre = Preprocessor.from_dict(manifest.preprocessing)  # validated with the manifest
    members = tuple(_load_member(m, raws[m.file], manifest, pre, path) for m in manifest.members)
    return LoadedBundle(
        manifest=manifest,
        members=members,
        weights=np.array([m.weight for m in manifest.members], dtype=np.float64),
        preprocessor=pre,
    )


def _load_member(
    member: ManifestMember, raw: bytes, manifest: Manifest, pre: Preprocessor, path: Path
) -> Member:
    file = path / member.file
    try:
        if member.kind == "nn":
            assert member.mlp_spec is not None
            spec = MLPSpec.from_dict(member.mlp_spec)
            n_features = len(pre.nn_feature_names)
            n_out = n_outputs(manifest.task, len(manifest.classes or []))
            _check_shapes(member, spec, _stored_shapes(raw, file), n_features, n_out, pre, file)
            return NNMember.from_state_dict(
                member.trial,
                spec,
                safetensors.torch.load(raw),
                task=manifest.task,
                n_features=n_features,
                n_classes=len(manifest.classes or []),
                y_mean=manifest.target.mean,
                y_std=manifest.target.std,
                embedding_sizes=pre.embedding_sizes,
            )
        gbm = GBMMember.from_bytes(member.trial, raw, task=manifest.task)
        own = len(pre.numeric) + len(pre.categorical)
        expected = own if pre.gbm_own_view else len(pre.nn_feature_names)
        if gbm.booster.num_features() != expected:
            raise ValueError(
                f"the model reads {gbm.booster.num_features()} features, "
                f"the preprocessing makes {expected}"
            )
        return gbm
    except MODEL_ERRORS as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HpoError(f"{file}: cannot load {member.kind}#{member.trial}: {first}") from None


def _stored_shapes(raw: bytes, file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (8-byte length, then JSON), read bounded.

    Raises:
        HpoError: the header is missing, too long, not JSON or has no valid shapes.
    """
    if len(raw) < 8:
        raise HpoError(f"{file}: not a safetensors file (shorter than its header)")
    size = int.from_bytes(raw[:8], "little")
    if size > min(len(raw) - 8, SAFETENSORS_HEADER_MAX_BYTES):
        raise HpoError(f"{file}: not a safetensors file (its header is longer than the file)")
    header = load_json(raw[8 : 8 + size], file, max_depth=4, what="not a safetensors file")
    if not isinstance(header, dict):
        raise HpoError(f"{file}: not a safetensors file (its header is no JSON object)")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise HpoError(f"{file}: not a safetensors file (tensor {key!r} has no valid shape)")
        shapes[key] = tuple(shape)
    return shapes


def _check_shapes(
    member: ManifestMember,
    spec: MLPSpec,
    stored: dict[str, tuple[int, ...]],
    n_features: int,
    n_out: int,
    pre: Preprocessor,
    file: Path,
) -> None:
    """The network the manifest declares must hold exactly the stored tensors' shapes.

    Checked on PyTorch's meta device (shapes, no memory), after two cheap bounds that keep
    even that small: no more layers than stored tensors, no width above the largest stored
    dimension of a non-empty tensor (safetensors checks that the data is all in the file).

    Raises:
        HpoError: a declared size that the stored weights do not have (the first one named).
    """
    name = f"nn#{member.trial}"
    largest = max((max(s) for s in stored.values() if s and math.prod(s) > 0), default=0)
    sizes = [("width", layer.width) for layer in spec.layers]
    if pre.embedding_sizes:
        sizes.append(("embedding_dim", spec.embedding_dim))
    if spec.numeric_embedding == "periodic":
        sizes += [("n_frequencies", spec.n_frequencies), ("periodic_width", spec.periodic_width)]
    sizes.append(("heads", spec.heads))
    for key, value in sizes:
        if value > largest:
            raise HpoError(
                f"{file}: {name} declares {key} {value}, but no stored tensor has a dimension "
                f"that large (largest {largest}); refusing to build it"
            )
    if len(spec.layers) > len(stored):
        raise HpoError(
            f"{file}: {name} declares {len(spec.layers)} layers, but the file stores only "
            f"{len(stored)} tensors; refusing to build it"
        )
    declared = state_shapes(spec, n_features, n_out, pre.embedding_sizes)
    for key in sorted(declared.keys() | stored.keys()):
        want, have = declared.get(key), stored.get(key)
        if want != have:
            raise HpoError(
                f"{file}: {name} declares tensor {key} of shape {want}, the file stores "
                f"{have}; refusing to build it"
            )
