"""RealMLP-TD's published defaults (Holzmüller et al., NeurIPS 2024; pytabkit's
``DefaultParams.RealMLP_TD_CLASS`` and ``RealMLP_TD_REG``) in hpo's own search dimensions,
enqueued as the first trial of a tabular study: a tuned study should not end below it.

The translation, and where it is only near:

- 3 x 256, dropout 0.15, batch 256, category embeddings of 8, the ``pbld`` periodic
  embedding (16 frequencies, sigma 0.1, 3 learned values per column), the front scale,
  label smoothing 0.1 (classes), Adam with beta2 0.95 and decoupled weight decay: as is.
- Activation: SELU for classes; RealMLP's Mish for regression is not among hpo's, GELU is
  the nearest (smooth ReLU-like). pytabkit makes both parametric (a learned slope per
  unit) with ``he+5`` bias init: hpo has neither; LeCun-normal (SELU) and He-normal (GELU)
  stand for its unit-variance NTK init.
- Learning rate: pytabkit trains in the NTK parametrization (``W / sqrt(fan_in)``), so its
  0.04 (classes) and 0.2 (regression) move a 256-wide layer like a standard-parametrized
  rate of ``lr / sqrt(256)``: 2.5e-3 and 1.25e-2. Its per-group rate factors (bias 0.1,
  embedding 0.1, scale 6) are not translated.
- Weight decay: pytabkit shrinks weights by ``lr * wd = 0.04 * 0.02`` (classes) per step;
  hpo's ``adamw`` shrinks them by ``learning_rate * 2 * l2``: the same shrink is l2 = 0.16
  (for both tasks), above the default l2 range, which the fit below clamps to its top.
- Schedules: pytabkit's ``coslog4`` learning rate (four cosine cycles) and its
  ``flat_cos`` dropout and weight-decay schedules are one ``flat_cosine`` learning rate.
  Its 256 epochs are the study's ``nn.epochs`` (for a table 100 unless the spec says,
  :data:`hpo.spec.TABLE_EPOCHS`), all of them run (a flat_cosine trial does not stop
  early) and the best epoch kept, as RealMLP does.
"""

from __future__ import annotations

from typing import Any

from hpo.spec import DataSpec, FloatRange, IntRange, NNSpace, Task, is_table_source

BASELINE_NAME = "baseline_name"  # user attr: which named baseline a trial is
REALMLP_TD = "RealMLP-TD"


def realmlp_td_params(task: Task) -> dict[str, Any]:
    """RealMLP-TD's defaults for ``task`` as NNSpace params (see the module docstring)."""
    classes = task != "regression"
    params: dict[str, Any] = {
        "depth": 3,
        "width": 256,
        "activation": "selu" if classes else "gelu",
        "initializer": "lecun_normal" if classes else "he_normal",
        "normalization": "none",
        "dropout": 0.15,
        "l2": 0.16,
        "learning_rate": 2.5e-3 if classes else 1.25e-2,
        "optimizer": "adamw",
        "beta2": 0.95,
        "lr_schedule": "flat_cosine",
        "batch_size": 256,
        "embedding_dim": 8,
        "numeric_embedding": "periodic",
        "n_frequencies": 16,
        "frequency_scale": 0.1,
        "periodic_width": 3,
        "feature_scale": True,
        "heads": 1,
    }
    if classes:
        params["label_smoothing"] = 0.1
    return params


def fit_to_space(params: dict[str, Any], space: NNSpace) -> dict[str, Any]:
    """The params that the study's space allows, so that the baseline stays a trial of it.

    A number outside its range moves to the nearest end (a pinned number: the pin); a choice
    the space lacks is left out, for the sampler to fill (a pinned choice: the pin). Keys the
    space does not have are left out. The trial is then the nearest the space allows to
    the defaults, and never outside what the user declared.
    """
    fitted: dict[str, Any] = {}
    for name, value in params.items():
        if name not in type(space).model_fields:
            continue
        dim = getattr(space, name)
        if isinstance(dim, IntRange | FloatRange):
            fitted[name] = type(value)(min(max(value, dim.low), dim.high))
        elif value in dim:
            fitted[name] = value
    return fitted


def is_tabular(data: DataSpec) -> bool:
    """Tables and scikit-learn's datasets; IDX folders hold images (Fashion-MNIST)."""
    return is_table_source(data.source)
