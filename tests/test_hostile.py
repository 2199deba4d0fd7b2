"""Input from a hostile or unlucky user: storage URLs whose password must never be printed,
specs with typos that would ask for terabytes, special files as data, ``export --force``
over a folder with the user's own files.

Cases that could take the machine run ``hpo`` in a subprocess under a memory limit and a
timeout, so that a regression fails the test instead of swapping or hanging.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC, _merge
from helpers import REPO
from sqlalchemy.engine import make_url
from typer.testing import Result

from hpo.data.dataset import resolve_data_path
from hpo.errors import HpoError
from hpo.spec import load_spec
from hpo.storage.masking import mask_text, mask_url, url_secrets
from hpo.studies.workers import LocalWorkers

MEMORY_LIMIT = 3 * 2**30  # address space: the CLI with torch and XGBoost loaded needs ~1.2 GB
HOSTILE_TIMEOUT_S = 60  # a hang fails the test; an Error comes within seconds of the imports
SECRET = "Zq9"  # in every test password: no output may contain it


def hpo(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, limited: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m hpo ARGS`` in a fresh process; ``limited``: under the memory limit."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    base = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *map(str, args)],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=HOSTILE_TIMEOUT_S if limited else 300,
        preexec_fn=cap_memory if limited else None,
    )


def one_error_line(result: subprocess.CompletedProcess[str] | Result, *fragments: str) -> str:
    """Exit 1, nothing on stdout, exactly one ``Error:`` line on stderr; returns it."""
    done = isinstance(result, subprocess.CompletedProcess)
    code = result.returncode if done else result.exit_code
    assert code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def spec_file(path: Path, changes: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(_merge(TINY_SPEC, changes)))
    return path


# --- storage URLs ---------------------------------------------------------------------

# Passwords a URL may carry: a "/", regex characters, percent escapes, a query parameter.
PASSWORD_URLS = {
    "slash": "postgresql://postgres:ab/Zq9slash@{host}/{db}",
    "regex": "postgresql://postgres:Zq9(.*)+[x]$^\\1|?{{2}}@{host}/{db}",
    "percent": "postgresql://postgres:Zq9%40pct%2Fx%3A@{host}/{db}",
    "query": "postgresql://postgres@{host}/{db}?password=Zq9query%26x",
    "query-and-user": "postgresql://postgres:Zq9both@{host}/{db}?sslmode=prefer&password=Zq9q",
}


@pytest.mark.parametrize("kind", sorted(PASSWORD_URLS))
def test_mask_url_hides_every_form_of_the_password(kind: str) -> None:
    url = PASSWORD_URLS[kind].format(host="db-host:5432", db="hpo")
    masked = mask_url(url)
    assert SECRET not in masked and "***" in masked, masked
    assert masked.startswith("postgresql://postgres") and "db-host:5432/hpo" in masked
    # Drivers echo the password as they were given it: decoded, anywhere in a message.
    echoed = f"failed for {url}: " + " ".join(url_secrets(url))
    assert SECRET not in mask_text(echoed, url)
    assert SECRET not in mask_text(f"x {url} y", "sqlite:///other.db")  # any URL in the text


def test_mask_url_with_an_unencoded_at_in_the_password() -> None:
    url = "postgresql://postgres:ab@Zq9at@127.0.0.1:5432/adv"
    assert mask_url(url) == "postgresql://postgres:***@127.0.0.1:5432/adv"
    assert SECRET not in mask_text(f"could not resolve 'Zq9at@127.0.0.1' for {url}", url)


def test_urls_without_a_password_print_as_written() -> None:
    for url in ("sqlite:///storage/a@b.db", "postgresql://postgres@db/hpo", "grpc://proxy:13000"):
        assert mask_url(url) == url


@pytest.fixture(scope="module")
def pg_study(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgStudy]:
    """A tiny study run once on PostgreSQL through a URL with a "/" in its password."""
    root = tmp_path_factory.mktemp("pg")
    db = make_url(pg_url).database
    url = PASSWORD_URLS["slash"].format(host="127.0.0.1:5432", db=db)
    spec = spec_file(root / "spec.yaml", {})
    ran = hpo("run", spec, "--storage", url, "--artifacts", root / "artifacts", "-q", cwd=root)
    yield PgStudy(root, db, spec, root / "artifacts", ran)


@dataclass(frozen=True)
class PgStudy:
    root: Path
    db: str
    spec: Path
    artifacts: Path
    ran: subprocess.CompletedProcess[str]

    def url(self, kind: str, host: str = "127.0.0.1:5432") -> str:
        return PASSWORD_URLS[kind].format(host=host, db=self.db)


def test_hpo_run_never_prints_the_password(pg_study: PgStudy) -> None:
    assert pg_study.ran.returncode == 0, pg_study.ran.stderr
    assert "postgres:***@127.0.0.1:5432" in pg_study.ran.stderr  # the storage line, masked
    assert SECRET not in pg_study.ran.stdout + pg_study.ran.stderr


@pytest.mark.parametrize("kind", sorted(PASSWORD_URLS))
def test_studies_and_status_never_print_the_password(
    pg_study: PgStudy, kind: str, cli: Callable[..., Result]
) -> None:
    url = pg_study.url(kind)
    listed = cli("studies", "--storage", url)
    assert listed.exit_code == 0 and "tiny-nn" in listed.stdout, listed.output
    status = cli("status", "tiny", "--storage", url)
    assert status.exit_code == 0, status.output
    for result in (listed, status):
        assert SECRET not in result.stdout + result.stderr


def test_hpo_worker_never_prints_the_password(pg_study: PgStudy) -> None:
    url = pg_study.url("regex")
    done = hpo("worker", pg_study.spec, "--storage", url, "--artifacts", pg_study.artifacts, "-q",
               cwd=pg_study.root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tiny-nn: 4/4 finished trials" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_local_workers_never_print_the_password(pg_study: PgStudy) -> None:
    """``--workers 2`` hands the URL (braces and all) to its workers in ``HPO_STORAGE``."""
    url = pg_study.url("regex")
    done = hpo("run", pg_study.spec, "--workers", "2", "--storage", url,
               "--artifacts", pg_study.artifacts, "-q", cwd=pg_study.root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 workers, storage postgresql://postgres:***@127.0.0.1:5432" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_workers_get_the_url_in_their_environment_not_argv(pg_study: PgStudy) -> None:
    url = pg_study.url("slash")
    pool = LocalWorkers(pg_study.spec, 2, storage_url=url, artifacts_path="a", trials=4)
    argv = " ".join(pool.command(1))
    assert SECRET not in argv and "--storage" not in argv


@pytest.mark.parametrize("kind", sorted(PASSWORD_URLS))
def test_an_unreachable_server_never_prints_the_password(
    kind: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    url = PASSWORD_URLS[kind].format(host="127.0.0.1:1", db="nowhere")
    line = one_error_line(cli("studies", "--storage", url), "cannot open storage", "***")
    assert SECRET not in line


def test_an_unencoded_at_in_the_password_is_refused_unprinted(tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "spec.yaml", {})
    url = "postgresql://postgres:ab@Zq9at@127.0.0.1:5432/postgres"
    for args in (("run", spec), ("worker", spec), ("studies",), ("status", "tiny")):
        result = hpo(*args, "--storage", url, cwd=tmp_path, limited=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "%40" in errors[0], result.stderr  # a worker says hello first
        assert SECRET not in result.stdout + result.stderr


def test_run_against_an_unreachable_server_never_prints_the_password(tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "spec.yaml", {})
    url = PASSWORD_URLS["slash"].format(host="127.0.0.1:1", db="nowhere")
    result = hpo("run", spec, "--storage", url, cwd=tmp_path, limited=True)
    assert result.returncode == 1 and SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Error: cannot open storage" in result.stderr


# --- spec limits and command-line values ----------------------------------------------


def test_a_huge_width_is_an_error_naming_the_limit(tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "spec.yaml", {"nn": {"search_space": {"width": 10000000}}})
    started = time.monotonic()
    result = hpo("run", spec, cwd=tmp_path, limited=True)
    one_error_line(
        result, "nn.search_space.width: 10000000 is above the limit 16384", "limits.width"
    )
    assert time.monotonic() - started < 30
    assert not (tmp_path / "storage").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"nn": {"search_space": {"depth": {"low": 1, "high": 1000}}}}, "nn.search_space.depth"),
        ({"nn": {"search_space": {"batch_size": [64, 2**40]}}}, "nn.search_space.batch_size"),
        ({"nn": {"search_space": {"embedding_dim": 10**6}}}, "nn.search_space.embedding_dim"),
        ({"data": {"max_onehot": 10**6}}, "data.max_onehot"),
        ({"nn": {"epochs": 10**9}}, "nn.epochs"),
        ({"nn": {"patience": 10**9}}, "nn.patience"),
        ({"nn": {"trials": 10**9}}, "nn.trials"),
        ({"gbm": {"trials": 10**9}}, "gbm.trials"),
        ({"gbm": {"search_space": {"n_estimators": 10**9}}}, "gbm.search_space.n_estimators"),
        ({"gbm": {"search_space": {"max_depth": 10**4}}}, "gbm.search_space.max_depth"),
        ({"gbm": {"max_bin": 10**9}}, "gbm.max_bin"),
        ({"ensemble": {"greedy_rounds": 10**9}}, "ensemble.greedy_rounds"),
        ({"ensemble": {"nn_members": 10**6}}, "ensemble.nn_members"),
        (
            {"nn": {"baselines": [{"layers": [{"width": 64, "activation": "relu"},
                                             {"width": 10**8, "activation": "relu"}]}]}},
            "nn.baselines.0.layers.1.width",
        ),
    ],
)  # fmt: skip
def test_every_size_has_a_limit(tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    with pytest.raises(HpoError, match=rf"{key}: \d+ is above the limit \d+; set limits\."):
        load_spec(spec_file(tmp_path / "spec.yaml", changes))


def test_limits_can_be_raised_by_a_user_who_means_it(tmp_path: Path) -> None:
    changes = {"nn": {"search_space": {"width": 100000}}, "limits": {"width": 200000}}
    spec, _ = load_spec(spec_file(tmp_path / "spec.yaml", changes))
    assert spec.nn.search_space.width.high == 100000
    with pytest.raises(HpoError, match=r"limits\.width: Input should be greater than or equal"):
        load_spec(spec_file(tmp_path / "spec.yaml", {"limits": {"width": 0}}))


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--trials", "-1"], ["--trials -1: nn.trials", "greater than or equal to 0"]),
        (["--trials", "99999999"], ["--trials 99999999", "above the limit", "limits.trials"]),
        (["--timeout", "0"], ["--timeout 0.0: nn.timeout", "greater than 0"]),
        (["--timeout", "-5"], ["--timeout -5.0", "greater than 0"]),
    ],
)
def test_command_line_trials_and_timeout_are_checked_like_the_yaml(
    command: str,
    flags: list[str],
    fragments: list[str],
    write_spec: Callable[..., Path],
    cli: Callable[..., Result],
    workdir: Path,
) -> None:
    one_error_line(cli(command, write_spec(), *flags), *fragments)
    assert not (workdir / "storage").exists()


def test_ensemble_member_counts_are_checked_like_the_yaml(
    pg_study: PgStudy, cli: Callable[..., Result]
) -> None:
    args = ["ensemble", "tiny", "--storage", pg_study.url("slash")]
    one_error_line(cli(*args, "--nn-members", "-1"), "--nn-members -1: ensemble.nn_members")
    one_error_line(cli(*args, "--gbm-members", "5000"), "above the limit 1000", "limits.members")
    one_error_line(
        cli(*args, "--nn-members", "0", "--gbm-members", "0"),
        "--nn-members 0 --gbm-members 0: ensemble: nn_members + gbm_members must be at least 1",
    )


# --- YAML tags and data paths ---------------------------------------------------------


def test_python_yaml_tags_are_refused(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(TINY_SPEC).replace(
            "name: tiny", 'name: !!python/object/apply:os.system ["touch pwned"]'
        )
    )
    one_error_line(hpo("run", spec, cwd=tmp_path, limited=True), "not valid YAML")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder"])
def test_a_csv_path_that_is_no_regular_file_is_refused_at_once(
    special: str, tmp_path: Path
) -> None:
    path = tmp_path / "data.csv"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "folder":
        path.mkdir()
    else:
        path = Path(special)
    data = {"source": "csv", "path": str(path), "target": "y", "name": None}
    spec = spec_file(tmp_path / "spec.yaml", {"data": data})
    one_error_line(hpo("run", spec, cwd=tmp_path, limited=True), "not a regular file", str(path))


def test_an_idx_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mnist").write_text("not a folder")
    with pytest.raises(HpoError, match="not a folder of IDX files"):
        resolve_data_path("mnist", tmp_path, "idx")


# --- export --force -------------------------------------------------------------------


@pytest.fixture
def exported(pg_study: PgStudy, tmp_path: Path, cli: Callable[..., Result]) -> list[str]:
    """``hpo export`` of the PostgreSQL study to ``tmp_path/out``; its argv."""
    storage = ["--storage", pg_study.url("slash"), "--artifacts", str(pg_study.artifacts)]
    args = ["export", "tiny", "--out", str(tmp_path / "out"), *storage]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.stdout + result.stderr
    return args


def test_export_force_never_deletes_a_file_the_manifest_does_not_list(
    exported: list[str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "NOTES.md").write_text("my notes")
    one_error_line(cli(*exported, "--force"), "NOTES.md", "does not list")
    assert (out / "NOTES.md").read_text() == "my notes"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "NOTES.md"} == before
    (out / "NOTES.md").unlink()
    (out / "old-run").mkdir()  # a folder is never a bundle file either
    one_error_line(cli(*exported, "--force"), "old-run")
    (out / "old-run").rmdir()

    assert cli(*exported, "--force").exit_code == 0  # the bundle alone: replaced
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_export_force_refuses_a_folder_that_is_no_bundle(
    exported: list[str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    (out / "manifest.json").write_text('{"format": "something else"}')
    one_error_line(cli(*exported, "--force"), "refusing to replace", "not an hpo-ensemble")
    assert len(list(out.iterdir())) > 1  # nothing deleted


def test_kill_9_during_export_never_leaves_a_partial_bundle(
    exported: list[str], tmp_path: Path
) -> None:
    """The process dies (SIGKILL) after writing the first file of the new bundle."""
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kill_mid_write = (
        "import os, pathlib, signal, sys\n"
        "write = pathlib.Path.write_bytes\n"
        "def write_then_die(self, data):\n"
        "    write(self, data)\n"
        "    if self.parent.name.endswith('.tmp'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pathlib.Path.write_bytes = write_then_die\n"
        "from hpo.cli import app\n"
        "app(sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    died = subprocess.run(
        [sys.executable, "-c", kill_mid_write, *exported, "--force"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=300,
    )
    assert died.returncode == -9, died.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old bundle, whole
