from __future__ import annotations

from pathlib import Path

import pytest

from hpo.errors import HpoError
from hpo.spec import NNConfig, NNSpace, StudySpec, load_spec

STUDIES = Path(__file__).resolve().parent.parent / "studies"


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path: Path) -> None:
    spec, base_dir = load_spec(path)
    assert spec.name and base_dir == STUDIES


def test_plain_value_pins_a_dimension(write_spec) -> None:
    spec, _ = load_spec(
        write_spec({"nn": {"search_space": {"depth": 3, "dropout": 0.2, "activation": "selu"}}})
    )
    space = spec.nn.search_space
    assert (space.depth.low, space.depth.high) == (3, 3)
    assert (space.dropout.low, space.dropout.high) == (0.2, 0.2)
    assert space.activation == ["selu"]


def test_defaults_cover_every_choice() -> None:
    space = NNSpace()
    assert len(space.activation) == 8 and len(space.initializer) == 6
    assert len(space.normalization) == 5 and len(space.optimizer) == 6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nn": {"search_space": {"activation": ["relu", "swish"]}}}, "nn.search_space.activation"),
        ({"nn": {"search_space": {"dropout": 1.5}}}, "dropout must lie in [0, 1), got 1.5"),
        ({"nn": {"search_space": {"width": {"low": 64, "high": 8}}}}, "low (64) is above high (8)"),
        ({"task": "clustering"}, "task: Input should be"),
        ({"data": {"source": "csv", "path": "x.csv"}}, "needs 'target'"),
        ({"nn": {"baselines": [{"depth": 9}]}}, "baselines[0].depth: 9 is outside"),
        ({"nn": {"baselines": [{"colour": 1}]}}, "unknown key 'colour'"),
        ({"nn": {"epochs": 0}}, "nn.epochs"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_spec_names_file_key_and_problem(write_spec, changes, message) -> None:
    path = write_spec(changes)
    with pytest.raises(HpoError) as info:
        load_spec(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text
    assert "\n" not in text


def test_unknown_activation_says_what_was_given(write_spec) -> None:
    with pytest.raises(HpoError, match="got 'swish'"):
        load_spec(write_spec({"nn": {"search_space": {"activation": "swish"}}}))


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: [multiclass\n")
    with pytest.raises(HpoError, match=r"bad.yaml: not valid YAML at line \d"):
        load_spec(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="cannot read the study spec"):
        load_spec(tmp_path / "nope.yaml")


def test_a_table_trains_longer_than_images_unless_the_spec_says() -> None:
    table = {
        "name": "t",
        "task": "binary",
        "data": {"source": "csv", "path": "t.csv", "target": "y"},
    }
    images = {"name": "i", "task": "multiclass", "data": {"source": "idx", "path": "fashion"}}
    assert (StudySpec(**table).nn.epochs, StudySpec(**table).nn.patience) == (100, 20)
    assert (StudySpec(**images).nn.epochs, StudySpec(**images).nn.patience) == (30, 5)
    # What the spec sets stays, from YAML or from code; the other one takes the default.
    set_epochs = StudySpec(**table, nn={"epochs": 12})
    assert (set_epochs.nn.epochs, set_epochs.nn.patience) == (12, 20)
    in_code = StudySpec(**table, nn=NNConfig(patience=3))
    assert (in_code.nn.epochs, in_code.nn.patience) == (100, 3)
    # A stored spec reads back as it was written.
    assert StudySpec(**set_epochs.model_dump()) == set_epochs
