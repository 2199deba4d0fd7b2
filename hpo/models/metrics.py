"""Every score hpo reports, in one place, computed by scikit-learn on member predictions.

A prediction is what :mod:`hpo.models.members` returns: for classification an ``(n, n_classes)``
array of class probabilities (binary included), for regression an ``(n,)`` array in the
target's own units. Labels ``y`` are class ids ``0..n_classes-1`` or target values.

Two kinds of score:

- the validation **loss**, the objective of both studies of a task and what pruning and
  early stopping watch: log loss for classes, RMSE in target units for regression (the NN
  trains on standardized MSE, a monotone function of it, so nothing else changes);
- the user **metric** (the spec's ``metric:``), what the leaderboard ranks and the greedy
  ensemble optimizes on validation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from hpo.spec import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    MetricName,
    Task,
    default_metric,
    metrics_for,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "MetricName",
    "default_metric",
    "metrics_for",
]
HIGHER_IS_BETTER: dict[MetricName, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "roc_auc": True,
    "log_loss": False,
    "f1": True,
    "rmse": False,
    "mae": False,
    "r2": True,
}


def loss_name(task: Task) -> MetricName:
    """The validation loss of a task, named as the dashboard and tables show it."""
    return "rmse" if task == "regression" else "log_loss"


def recorded_metrics(task: Task, metric: MetricName) -> tuple[MetricName, ...]:
    """The metrics a trial stores (``val_<name>``, ``test_<name>``): the task's default,
    ROC AUC for binary tasks, and the spec's metric."""
    names: list[MetricName] = [default_metric(task)]
    if task == "binary":
        names.append("roc_auc")
    return tuple(dict.fromkeys([*names, metric]))


def validation_loss(task: Task, pred: np.ndarray, y: np.ndarray) -> float:
    """Log loss for classes, RMSE in target units for regression."""
    return score(loss_name(task), pred, y)


def score(name: MetricName, pred: np.ndarray, y: np.ndarray) -> float:
    """One metric of a prediction (probabilities, or regression values) against labels.

    ROC AUC is one-vs-rest, macro-averaged, for more than two classes; F1 is the positive
    class's for two and macro-averaged for more. A metric undefined on these labels (ROC AUC
    with one class present) is NaN.
    """
    if name in REGRESSION_METRICS:
        regression: dict[str, Callable[..., float]] = {
            "rmse": skm.root_mean_squared_error,
            "mae": skm.mean_absolute_error,
            "r2": skm.r2_score,
        }
        return float(regression[name](y, pred))
    labels = np.arange(pred.shape[1])
    y = y.astype(np.int64)
    binary = pred.shape[1] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        match name:
            case "accuracy":
                return float(skm.accuracy_score(y, pred.argmax(axis=1)))
            case "balanced_accuracy":
                return float(skm.balanced_accuracy_score(y, pred.argmax(axis=1)))
            case "f1":
                average = "binary" if binary else "macro"
                return float(
                    skm.f1_score(
                        y, pred.argmax(axis=1), labels=labels, average=average, zero_division=0
                    )
                )
            case "log_loss":
                # float32 models sum to one only to ~1e-7, which scikit-learn warns about.
                proba = pred / pred.sum(axis=1, keepdims=True)
                return float(skm.log_loss(y, proba, labels=labels))
            case "roc_auc":
                if len(np.unique(y)) < 2:
                    return float("nan")
                if binary:
                    return float(skm.roc_auc_score(y, pred[:, 1]))
                return float(skm.roc_auc_score(y, pred, multi_class="ovr", labels=labels))
    raise ValueError(f"unknown metric {name!r}")


def scores(
    names: tuple[MetricName, ...], part: str, pred: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """``{"<part>_<name>": value}`` for each name, as trials and leaderboard rows store them."""
    return {f"{part}_{name}": score(name, pred, y) for name in names}


def is_better(name: MetricName, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` on this metric (NaN is never better)."""
    return bool(a > b) if HIGHER_IS_BETTER[name] else bool(a < b)


def selection_key(
    task: Task, metric: MetricName, y: np.ndarray
) -> Callable[[np.ndarray], tuple[float, float]]:
    """What the greedy ensemble minimizes: the metric (negated where higher is better), then
    the validation loss, so that ties of a coarse metric (accuracy) go to the better fit."""
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0

    def key(pred: np.ndarray) -> tuple[float, float]:
        value = score(metric, pred, y)
        return (sign * value if np.isfinite(value) else np.inf, validation_loss(task, pred, y))

    return key


def constant_prediction(task: Task, train_y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """The no-skill model: the training class frequencies (its argmax is the majority
    class) or the training mean, for ``n`` rows."""
    if task == "regression":
        return np.full(n, float(np.mean(train_y)))
    prior = np.bincount(train_y.astype(np.int64), minlength=n_classes) / len(train_y)
    return np.tile(prior, (n, 1))


def no_skill_name(task: Task) -> str:
    if task == "regression":
        return "predicting the training mean"
    return "predicting the majority class"
