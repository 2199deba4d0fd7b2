"""Train an exported ensemble again on new rows, from the recipe its manifest records.

The preprocessing is fitted again on the rows (column kinds kept), the target encoded as
the study encoded it (class labels to the bundle's class indices; a regression target
standardized for the networks), and every member trained with its hyperparameters for
its recorded epochs or boosting rounds (:mod:`hpo.models.refit`). The ensemble weights
stay as the study chose them on its validation split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpo.data.preprocess import Preprocessor
from hpo.ensemble.bundle import LoadedBundle, ManifestMember
from hpo.errors import HpoError, InputError
from hpo.models.members import MODEL_ERRORS, GBMMember, Member, NNMember
from hpo.models.mlp import MLPSpec
from hpo.models.refit import fit_booster, fit_mlp
from hpo.models.threads import choose_threads, configure_threads
from hpo.models.train import NonFiniteLoss


def check_refittable(bundle: LoadedBundle, path: str | Path) -> None:
    """Raises HpoError: the bundle records no training recipe (exported by an older hpo)."""
    if bundle.preprocessor.settings is None or any(
        m.refit is None for m in bundle.manifest.members
    ):
        raise HpoError(
            f"{path}: this bundle cannot be refitted: it records no training recipe "
            "(exported by an older hpo); re-export it with `hpo export` to refit it"
        )


def encode_target(y: Any, n_rows: int, task: str, classes: list[Any] | None) -> np.ndarray:
    """``y`` as the study trains on it: class indices into ``classes``, or float targets.

    Raises:
        InputError: not one value per row, an unknown label, one class only, or a
            regression target that is not a finite number.
    """
    values = np.asarray(y.to_numpy() if isinstance(y, pd.Series | pd.DataFrame) else y)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or len(values) != n_rows:
        raise InputError(f"y must hold one value per row of X ({n_rows}), got shape {values.shape}")
    if task == "regression":
        try:
            target = values.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError("y must be numeric for a regression ensemble") from None
        if not np.isfinite(target).all():
            raise InputError("y contains NaN or infinity")
        return target
    assert classes is not None
    index = {c: i for i, c in enumerate(classes)}
    by_text = {str(c): i for i, c in enumerate(classes)}
    codes = np.empty(len(values), np.int64)
    for row, v in enumerate(values.tolist()):
        code = index.get(v) if _hashable(v) else None
        code = by_text.get(str(v)) if code is None else code
        if code is None:
            shown = ", ".join(map(str, classes[:10])) + (" ..." if len(classes) > 10 else "")
            raise InputError(
                f"y holds the label {v!r}, not one of this ensemble's classes: {shown}"
            )
        codes[row] = code
    found = np.unique(codes)
    if len(found) < 2:
        raise InputError(
            f"y holds one class only ({classes[found[0]]!r}): a classifier needs at least 2"
        )
    return codes


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def refit_bundle(
    bundle: LoadedBundle, rows: pd.DataFrame | np.ndarray, y: Any, path: str | Path
) -> LoadedBundle:
    """The bundle's members trained again on ``rows`` (checked raw features) and ``y``.

    Raises:
        HpoError: the bundle cannot be refitted, or a member's training failed (diverged).
        InputError: bad ``y`` or a non-number in a numeric column.
    """
    check_refittable(bundle, path)
    m = bundle.manifest
    target = encode_target(y, len(rows), m.task, m.classes)
    if len(rows) < 2:
        raise InputError("X needs at least 2 rows to train on")
    pre = bundle.preprocessor.refit(rows)
    views = pre.transform(rows)
    y_mean, y_std = 0.0, 1.0
    if m.task == "regression":
        y_mean, y_std = float(target.mean()), float(target.std()) or 1.0
    members = tuple(
        _refit_member(r, views, target, bundle, pre, y_mean, y_std, path) for r in m.members
    )
    manifest = m.model_copy(
        update={
            "preprocessing": pre.to_dict(),
            "target": m.target.model_copy(update={"mean": y_mean, "std": y_std}),
        }
    )
    return replace(bundle, manifest=manifest, members=members, preprocessor=pre)


def _refit_member(
    record: ManifestMember,
    views: dict[str, np.ndarray],
    target: np.ndarray,
    bundle: LoadedBundle,
    pre: Preprocessor,
    y_mean: float,
    y_std: float,
    path: str | Path,
) -> Member:
    recipe = record.refit
    assert recipe is not None
    task = bundle.manifest.task
    name = f"{record.kind}#{record.trial}"
    x = views[record.kind]
    try:
        if record.kind == "nn":
            assert record.mlp_spec is not None and recipe.epochs is not None
            spec = MLPSpec.from_dict(record.mlp_spec)
            configure_threads(*x.shape)
            y = (target - y_mean) / y_std if task == "regression" else target
            model = fit_mlp(
                spec,
                x,
                y,
                task=task,
                n_classes=len(bundle.manifest.classes or []),
                epochs=recipe.epochs,
                seed=recipe.seed,
                embedding_sizes=pre.embedding_sizes,
                schedule_epochs=recipe.schedule_epochs,
                learning_rates=recipe.learning_rates,
            )
            return NNMember(record.trial, spec, model, task, y_mean, y_std)
        assert recipe.booster is not None and recipe.rounds is not None
        from hpo.studies.gbm import xgb_device  # here: predicting needs no study machinery

        params = {**recipe.booster, "device": xgb_device(), "nthread": choose_threads(*x.shape)}
        booster = fit_booster(
            params, x, target, rounds=recipe.rounds, feature_types=pre.gbm_feature_types
        )
        booster.set_param({"device": "cpu"})  # predicts where the data is, as when loaded
        return GBMMember(record.trial, booster, task)
    except NonFiniteLoss as e:
        raise HpoError(f"{path}: refitting {name} diverged ({e})") from None
    except MODEL_ERRORS as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HpoError(f"{path}: cannot refit {name}: {first}") from None
