"""The CLI as a user runs it: results on stdout, one ``Error:`` line on stderr for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hpo import idx


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
    assert "Best trial #" in result.stdout and "tiny-nn: best 5 trials" in result.stdout
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
    assert_one_error_line(cli("status", "tiny"), "no database at storage/hpo.db")
    assert not (workdir / "storage").exists()


def test_unknown_study_name(cli, write_spec) -> None:
    cli("run", write_spec(), "--trials", "1")
    assert_one_error_line(
        cli("best", "other"), "no study named 'other' (studies here: tiny-gbm, tiny-nn)"
    )


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
