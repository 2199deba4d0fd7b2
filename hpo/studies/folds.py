"""K-fold trials (``data.validation: {kfold: K}``): one model per fold, scored out of fold.

What the NN and GBM objectives share when a trial trains K models (as AutoGluon's bagged
models do): fold 0 trains first and alone reports to the pruner (its epochs or rounds are
the trial's curve), the other folds follow, each early-stopping on its own validation
fold. Each fold model predicts the rows it never trained on, so the K validation folds
together give an out-of-fold (OOF) prediction for every non-test row, and the trial's
objective is the loss of that OOF prediction: an estimate from all non-test rows instead
of one small validation split. Test scores are those of the average of the K models,
which is what an ensemble member built from the trial predicts.

Stored per trial: every fold model as its own artifact (user attr ``fold_artifact_ids``, in
fold order; ``artifact_id`` is fold 0's, so a reader that knows nothing of folds still
finds a model that was validated on rows it did not train on), and the OOF predictions as
a float32 ``.npy`` artifact (``oof_artifact_id``; rows in pool order, see
:attr:`hpo.data.dataset.Dataset.pool`) that the greedy ensemble fits its weights on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from hpo.data.dataset import Dataset
from hpo.models.metrics import MetricName, recorded_metrics, scores, validation_loss
from hpo.spec import Task
from hpo.storage import stored
from hpo.storage.backend import FileSystemArtifactStore, upload_bytes, write_trial


def out_of_fold(data: Dataset, fold_predictions: list[np.ndarray]) -> np.ndarray:
    """The fold models' predictions of their own validation folds, in pool row order."""
    assert data.pool is not None and len(fold_predictions) == data.n_folds
    first = fold_predictions[0]
    oof = np.full((len(data.pool.y), *first.shape[1:]), np.nan)
    for (_, val_rows), pred in zip(data.folds, fold_predictions, strict=True):
        oof[val_rows] = pred
    return oof


def fold_scores(
    data: Dataset,
    oof: np.ndarray,
    test_predictions: list[np.ndarray],
    metric: MetricName,
    loss: Callable[[Task, np.ndarray, np.ndarray], float] = validation_loss,
) -> tuple[float, dict[str, float]]:
    """The trial's objective (the family's ``loss`` of the OOF prediction over every
    non-test row) and its recorded metrics: ``val_*`` out of fold, ``test_*`` of the fold
    models' average."""
    assert data.pool is not None
    names = recorded_metrics(data.task, metric)
    test = np.mean(test_predictions, axis=0)
    metrics = scores(names, "val", oof, data.pool.y) | scores(names, "test", test, data.test.y)
    return loss(data.task, oof, data.pool.y), metrics


def npy_bytes(array: np.ndarray) -> bytes:
    """float32 ``.npy`` bytes: no pickle, readable by numpy alone."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_npy(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


def save_fold_results(
    trial: optuna.Trial,
    artifacts: FileSystemArtifactStore,
    fold_files: list[tuple[str, bytes]],
    oof: np.ndarray,
    attrs: dict[str, Any],
    *,
    curve: dict[int, float] | None = None,
) -> None:
    """Upload the K fold models and the OOF predictions, then write the trial's attrs and
    the ``curve`` not yet written, in one transaction: the attrs never name a file that is
    not there (as :func:`save_trial_results`)."""
    fold_ids = [upload_bytes(trial, artifacts, name, raw) for name, raw in fold_files]
    oof_id = upload_bytes(trial, artifacts, f"oof-trial-{trial.number}.npy", npy_bytes(oof))
    files = {
        stored.FOLDS: len(fold_files),
        stored.FOLD_ARTIFACT_IDS: fold_ids,
        stored.OOF_ARTIFACT_ID: oof_id,
        stored.ARTIFACT_ID: fold_ids[0],
    }
    write_trial(trial, {**attrs, **files}, curve, last=True)
