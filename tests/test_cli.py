"""The CLI as a user runs it: results on stdout, one ``Error:`` line on stderr for bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpo
from hpo.data import idx


def assert_one_error_line(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output + result.stderr


def test_run_status_best(cli, write_spec, workdir: Path) -> None:
    spec = write_spec()
    result = cli("run", spec, "--trials", "3")
    assert result.exit_code == 0, result.stderr
    assert "Best trial #" in result.stdout
    # The title counts the rows it shows: completed trials, at most 5.
    nn = optuna.load_study(study_name="tiny-nn", storage="sqlite:///storage/hpo.db")
    shown = min(5, len(nn.get_trials(states=(TrialState.COMPLETE,))))
    assert re.search(rf"tiny-nn: best {shown} trial{'s' if shown != 1 else ''} ", result.stdout)
    assert (workdir / "storage" / "hpo.db").exists()
    assert any((workdir / "storage" / "artifacts").iterdir())

    status = cli("status", "tiny")
    assert status.exit_code == 0
    assert "tiny-nn:" in status.stdout and "best val_log_loss" in status.stdout

    best = cli("best", "tiny", "--json")
    summary = json.loads(best.stdout)["tiny-nn"]
    assert summary["metrics"]["val_accuracy"] > 0.5 and summary["artifact_id"]

    listing = cli("studies")
    assert "tiny-nn" in listing.stdout and "sklearn:digits" in listing.stdout


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nn": {"search_space": {"activation": "swish"}}}, "nn.search_space.activation"),
        ({"nn": {"search_space": {"dropout": 1.5}}}, "dropout must lie in [0, 1), got 1.5"),
        ({"data": {"source": "idx", "path": "missing-folder"}}, "data path not found"),
        (
            {"data": {"source": "csv", "path": "t.csv", "target": "label"}},
            "no target column 'label'",
        ),
        (
            {"data": {"source": "csv", "path": "u.csv", "target": "label"}},
            "classification needs at least 2 classes in the target, found 1: 0",
        ),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(
    cli, write_spec, workdir, changes, message
) -> None:
    _csv(workdir / "t.csv", "a,b\n1,2\n")
    _csv(workdir / "u.csv", "a,label\n1,0\nx,0\n")
    result = cli("run", write_spec(changes))
    assert_one_error_line(result, message)
    assert not (workdir / "storage").exists()


def test_malformed_yaml(cli, workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("name: [unclosed\n")
    assert_one_error_line(cli("run", workdir / "bad.yaml"), "not valid YAML at line")


def test_missing_spec_file(cli) -> None:
    assert_one_error_line(cli("run", "nope.yaml"), "nope.yaml: cannot read the study spec")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://hpo:s3cret@127.0.0.1:1/hpo", "Connection refused"),
        ("nosuchdb://x/y", "Can't load plugin"),
        ("not a url", "not a storage URL"),
    ],
)
def test_unreachable_database(cli, write_spec, workdir, url: str, message: str) -> None:
    result = cli("run", write_spec(), "--storage", url)
    assert_one_error_line(result, message)
    assert "s3cret" not in result.stderr
    assert not (workdir / "storage").exists()


def test_read_commands_do_not_create_a_database(cli, workdir: Path) -> None:
    # The absolute path: run from the wrong folder, a user sees which folder was looked in.
    missing = workdir.resolve() / "storage" / "hpo.db"
    assert_one_error_line(cli("status", "tiny"), f"no database at {missing} ")
    assert not (workdir / "storage").exists()


def test_unknown_study_name(cli, write_spec) -> None:
    cli("run", write_spec(), "--trials", "1")
    assert_one_error_line(cli("best", "other"), "no study named 'other' (studies here: tiny)")


def test_data_fetch_without_internet_fails_clearly(cli, workdir: Path, monkeypatch) -> None:
    # A closed port on loopback stands for an unreachable mirror.
    monkeypatch.setitem(idx.MIRRORS, "mnist", "http://127.0.0.1:9/")
    result = cli("data", "fetch", "mnist", "--dir", workdir / "data")
    assert_one_error_line(result, "cannot download http://127.0.0.1:9/train-images-idx3-ubyte.gz")
    assert list((workdir / "data" / "mnist").iterdir()) == []  # nothing half-written


def test_installed_entry_point_runs(write_spec, workdir: Path) -> None:
    exe = shutil.which("hpo")
    assert exe, "the hpo console script is not installed (pip install -e .)"
    done = subprocess.run(
        [exe, "run", str(write_spec()), "--trials", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert "Best trial #0" in done.stdout


def test_version_and_help_without_type_placeholders(cli) -> None:
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout == f"hpo {hpo.__version__}\n"
    for command in ("run", "status", "export"):
        shown = cli(command, "--help")
        assert shown.exit_code == 0 and "--storage" in shown.stdout
        assert "<bool>" not in shown.stdout, shown.stdout


def test_quiet_prints_no_trial_lines_when_piped(cli, write_spec, workdir: Path) -> None:
    spec = write_spec()
    chatty = cli("run", spec, "--trials", "1")
    assert chatty.exit_code == 0, chatty.stderr
    assert re.search(r"^tiny-nn trial 0 (complete|pruned)", chatty.stderr, re.M)
    # The first run in a folder says where it makes the database; the next one does not.
    assert f"tiny: a new SQLite database at {workdir.resolve()}/storage/hpo.db\n" in chatty.stderr
    quiet = cli("run", spec, "--trials", "2", "-q")
    assert quiet.exit_code == 0, quiet.stderr
    assert " trial " not in quiet.stderr and "new SQLite database" not in quiet.stderr
    assert "Best trial #" in quiet.stdout


def test_status_and_best_read_as_text_and_exact_as_json(cli, write_spec) -> None:
    assert cli("run", write_spec(), "--trials", "2", "-q").exit_code == 0
    gbm = cli("status", "tiny-gbm")
    header = next(line for line in gbm.stdout.splitlines() if "secs" in line)
    assert "rounds" in header and "depth" in header and "epochs" not in header
    assert "optimizer" not in header and "tiny-nn" not in gbm.stdout
    text = cli("best", "tiny")
    assert text.exit_code == 0 and "{" not in text.stdout and "tiny-gbm" in text.stdout
    exact = json.loads(cli("best", "tiny", "--json").stdout)["tiny-nn"]
    # Rounded: no long float of the JSON appears with all its digits.
    floats = [v for v in (*exact["metrics"].values(), *exact["params"].values())]
    long = [repr(v) for v in floats if isinstance(v, float) and len(repr(v)) > 8]
    assert long and not [r for r in long if r in text.stdout], text.stdout
    nn = optuna.load_study(study_name="tiny-nn", storage="sqlite:///storage/hpo.db")
    assert exact["value"] == nn.best_value
    assert exact["metrics"]["val_accuracy"] == nn.best_trial.user_attrs["val_accuracy"]
    assert f"metrics: val_accuracy {exact['metrics']['val_accuracy']:.4f}" in text.stdout


def test_a_misspelt_spec_name_suggests_the_right_one(cli, write_spec) -> None:
    assert cli("run", write_spec(), "--trials", "1", "-q").exit_code == 0
    assert_one_error_line(
        cli("status", "tin"), "no study named 'tin' (studies here: tiny; did you mean tiny?)"
    )


def test_export_writes_the_method_the_ensemble_command_points_to(cli, write_spec) -> None:
    assert cli("run", write_spec(), "-q").exit_code == 0
    shown = cli("ensemble", "tiny", "--method", "average")
    assert shown.exit_code == 0, shown.stderr
    assert "(* average ensemble; `hpo export --method average` writes it)" in shown.stdout
    done = cli("export", "tiny", "--out", "b", "--method", "average")
    assert done.exit_code == 0, done.stderr
    assert json.loads(Path("b/manifest.json").read_text())["method"] == "average"
    assert "tiny: average ensemble of" in done.stderr
    spec_default = cli("export", "tiny", "--out", "c")
    assert json.loads(Path("c/manifest.json").read_text())["method"] == "greedy"
    assert spec_default.exit_code == 0 and "tiny: greedy ensemble of" in spec_default.stderr
