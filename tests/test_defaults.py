"""RealMLP-TD's defaults as the first trial of a tabular study, fitted into its space."""

from __future__ import annotations

from hpo.data.dataset import load_dataset
from hpo.spec import NNSpace, load_spec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies.defaults import BASELINE_NAME, REALMLP_TD, fit_to_space, realmlp_td_params
from hpo.studies.nn import NN
from hpo.studies.study import run_study

WIDE = {
    "numeric_embedding": ["none", "periodic"],
    "feature_scale": [False, True],
    "l2": {"low": 1e-6, "high": 1.0, "log": True},
}


def test_realmlp_td_defaults_per_task() -> None:
    classes, regression = realmlp_td_params("multiclass"), realmlp_td_params("regression")
    for params in (classes, regression):
        assert (params["depth"], params["width"], params["batch_size"]) == (3, 256, 256)
        assert params["numeric_embedding"] == "periodic" and params["feature_scale"] is True
        assert (params["n_frequencies"], params["frequency_scale"]) == (16, 0.1)
        assert (params["optimizer"], params["beta2"]) == ("adamw", 0.95)
        assert params["lr_schedule"] == "flat_cosine" and params["dropout"] == 0.15
    assert classes["label_smoothing"] == 0.1 and "label_smoothing" not in regression
    assert classes["activation"] == "selu" and regression["activation"] == "gelu"
    assert regression["learning_rate"] == 5 * classes["learning_rate"]  # pytabkit: 0.2 vs 0.04


def test_the_baseline_keeps_to_the_space_pins_included() -> None:
    params = realmlp_td_params("binary")
    today = fit_to_space(params, NNSpace())
    # Pinned choices it does not allow are left to the sampler (which can only give the pin);
    # numbers move into their range; keys the space lacks are dropped.
    assert "numeric_embedding" not in today and "feature_scale" not in today
    assert today["l2"] == NNSpace().l2.high and today["heads"] == 1
    assert set(today) <= set(NNSpace.model_fields)
    assert NNSpace().contains_params(today)
    wide = NNSpace.model_validate(WIDE)
    fitted = fit_to_space(params, wide)
    assert fitted["numeric_embedding"] == "periodic" and fitted["feature_scale"] is True
    assert fitted["l2"] == 0.16
    small = NNSpace.model_validate({"depth": {"low": 1, "high": 2}, "width": 64})
    assert (fit_to_space(params, small)["depth"], fit_to_space(params, small)["width"]) == (2, 64)


def _run(write_spec, changes, n_trials):
    spec, base_dir = load_spec(write_spec(changes))
    data = load_dataset(spec.data, spec.task, base_dir, spec.seed)
    return run_study(NN, spec, data, open_storage(), open_artifacts(), n_trials=n_trials)


def test_a_tabular_study_tries_realmlp_td_first(write_spec) -> None:
    changes = {
        "task": "binary",
        "data": {"name": "breast_cancer"},
        "nn": {"realmlp_baseline": True, "epochs": 3, "search_space": WIDE},
    }
    study = _run(write_spec, changes, 2)
    first = study.trials[0]
    assert first.user_attrs[BASELINE_NAME] == REALMLP_TD and first.user_attrs["baseline"]
    assert first.params["numeric_embedding"] == "periodic" and first.params["feature_scale"]
    assert first.params["activation"] == "selu" and first.params["dropout"] == 0.15
    assert "periodic 16f scaled" in first.user_attrs["architecture"]
    assert BASELINE_NAME not in study.trials[1].user_attrs
    # Enqueued once: a rerun does not enqueue it again.
    study = _run(write_spec, changes, 3)
    assert sum(t.user_attrs.get(BASELINE_NAME) == REALMLP_TD for t in study.trials) == 1


def test_no_realmlp_baseline_when_turned_off(write_spec) -> None:
    study = _run(write_spec, {"nn": {"realmlp_baseline": False, "epochs": 2}}, 1)
    assert BASELINE_NAME not in study.trials[0].user_attrs
