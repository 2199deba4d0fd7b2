"""The ``hpo`` command: a thin Typer layer over the library.

Each command parses its flags, calls the library, and prints. Results go to stdout;
progress and errors to stderr. An :class:`HpoError` becomes one ``Error: ...`` line and
exit code 1; Ctrl-C exits 130 with the database left consistent.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import optuna
import typer
from rich.console import Console
from rich.markup import escape

from hpo import __version__
from hpo.errors import HpoError, interrupted
from hpo.onnx_cli import BundleArg, OutputOpt, ProbaOpt
from hpo.storage.backend import mask_text, mask_url, open_artifacts, open_storage, storage_url
from hpo.studies.workers import quiet_optuna

if TYPE_CHECKING:
    from hpo.spec import RunOptions, StudySpec
    from hpo.storage.stored import StoredStudy
    from hpo.studies.launch import Bars

# Plain help: Rich's panels print a `<bool>` type beside every flag.
app = typer.Typer(
    help="Hyperparameter optimization for PyTorch MLPs and XGBoost, on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

out = Console()
if not out.is_terminal:  # piped or captured: no need to wrap tables at 80 columns
    out = Console(width=160)
err = Console(stderr=True, soft_wrap=True)  # log lines are not wrapped at 80 columns

F = TypeVar("F", bound=Callable[..., Any])

_STORAGE_HELP = "SQLAlchemy URL or grpc://HOST:PORT [env: HPO_STORAGE]"
StorageOpt = Annotated[str | None, typer.Option("--storage", help=_STORAGE_HELP)]
_ARTIFACTS_HELP = "Artifact directory [env: HPO_ARTIFACTS; default storage/artifacts]"
ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help=_ARTIFACTS_HELP)]
NameArg = Annotated[str, typer.Argument(help="Study spec name (e.g. digits) or a full study name")]
SpecArg = Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML")]
TrialsOpt = Annotated[int | None, typer.Option(help="Finished trials to reach (overrides spec)")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Seconds for this run (overrides the spec)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no trial lines")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exact JSON for scripts")]
MethodOpt = Annotated[str | None, typer.Option(help="average or greedy [default: the spec's]")]
FreshOpt = Annotated[bool, typer.Option(help="Keep the old studies under a dated name; start anew")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="Local worker processes, threads split")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads [default: all]")]
HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface)")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on")]
TopOpt = Annotated[int, typer.Option(help="Rows in the best-trials table")]
_REPORT_HELP = "HTML file to write [default: NAME-report.html]"
_INPUT_HELP = "Raw features: .csv or .parquet (columns by name), .npy or IDX"
InputOpt = Annotated[Path, typer.Option("--input", help=_INPUT_HELP)]
_ENGINE_HELP = "auto, native or onnx (auto: onnx without torch)"
EngineOpt = Annotated[str, typer.Option("--engine", help=_ENGINE_HELP)]
NNMembersOpt = Annotated[int | None, typer.Option(help="Best NN trials to use")]
GBMMembersOpt = Annotated[int | None, typer.Option(help="Best GBM trials to use")]
DatasetArg = Annotated[str, typer.Argument(help="mnist or fashion-mnist")]
DirOpt = Annotated[Path, typer.Option("--dir", help="Where the dataset folder goes")]
FormatOpt = Annotated[str, typer.Option("--format", help="bundle, or onnx: plus model.onnx")]
ReportOpt = Annotated[Path | None, typer.Option("--out", help=_REPORT_HELP)]


def user_errors(fn: F) -> F:
    """Turn errors a user can cause into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HpoError as e:
            # No password of a storage URL reaches the terminal, whoever wrote e: this
            # command's URL is parsed, any other URL in the text is masked too.
            message = escape(mask_text(str(e), storage_url(kwargs.get("storage"))))
            err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (KeyboardInterrupt, Exception) as e:
            if not interrupted(e):
                raise
            err.print("Interrupted: finished trials are kept; run again to continue.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def log(message: str) -> None:
    err.print(message, highlight=False, markup=False)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"hpo {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """Hyperparameter optimization for PyTorch MLPs and XGBoost, on Optuna."""
    quiet_optuna()


def _bars(quiet: bool) -> Bars:
    from hpo.progress import StudyBars

    return lambda targets, store: StudyBars(targets, err, quiet=quiet, storage=store)


def _spec(path: Path, *flags: Any) -> tuple[StudySpec, Path, RunOptions]:
    """The spec at ``path`` with the run flags (storage, artifacts, trials, timeout)."""
    from hpo.spec import RunOptions, check_overrides, load_spec

    spec, base_dir = load_spec(path)
    options = RunOptions(*flags)
    check_overrides(spec, trials=options.trials, timeout=options.timeout)
    return spec, base_dir, options


# fmt: off
@app.command()
@user_errors
def run(
    spec_path: SpecArg, storage: StorageOpt = None, artifacts: ArtifactsOpt = None,
    trials: TrialsOpt = None, timeout: TimeoutOpt = None, quiet: QuietOpt = False,
    fresh: FreshOpt = False, workers: WorkersOpt = 1,
) -> None:
    # fmt: on
    """Tune the NN and GBM studies of SPEC (resumed and topped up), then build the ensemble."""
    from hpo.studies.launch import run_all
    from hpo.summary import run_summary

    spec, base_dir, options = _spec(spec_path, storage, artifacts, trials, timeout)
    bars = _bars(quiet)
    result = run_all(spec, base_dir, spec_path, options, n_workers=workers, fresh=fresh,
                     bars=bars, log=log)  # fmt: skip
    for shown in run_summary(spec, result.studies.values(), result.leaderboard):
        out.print(shown, highlight=False)


# fmt: off
@app.command()
@user_errors
def worker(
    spec_path: SpecArg, threads: ThreadsOpt = None, quiet: QuietOpt = False,
    storage: StorageOpt = None, artifacts: ArtifactsOpt = None,
    trials: TrialsOpt = None, timeout: TimeoutOpt = None,
) -> None:
    # fmt: on
    """Join the study in SPEC (creating it if needed) and run trials until it reaches its target.

    Start one on each machine, all with the same --storage (PostgreSQL, or grpc:// through
    `hpo storage-proxy`) and --artifacts (a shared directory).
    """
    from hpo.studies.launch import run_worker
    from hpo.summary import worker_line

    spec, base_dir, options = _spec(spec_path, storage, artifacts, trials, timeout)
    for share in run_worker(spec, base_dir, options, threads=threads, bars=_bars(quiet), log=log):
        out.print(worker_line(share), highlight=False)


@app.command("storage-proxy")
@user_errors
def storage_proxy(
    storage: StorageOpt = None,
    port: PortOpt = 13000,
    host: HostOpt = "127.0.0.1",
) -> None:
    """Serve the storage to workers over gRPC: they use --storage grpc://HOST:PORT."""
    from hpo.storage.backend import serve_grpc_proxy
    from hpo.studies.workers import stop_on_sigterm

    stop_on_sigterm()
    log(f"storage proxy for {mask_url(storage_url(storage))} on grpc://{host}:{port}; Ctrl-C stops")
    try:
        serve_grpc_proxy(storage, host=host, port=port)
    except KeyboardInterrupt:
        err.print("storage proxy stopped")


@app.command()
@user_errors
def studies(storage: StorageOpt = None) -> None:
    """List the studies in the storage."""
    from hpo.summary import studies_table

    store = open_storage(storage, must_exist=True)
    title = f"Studies in {escape(mask_url(storage_url(storage)))}"
    out.print(studies_table(title, optuna.get_all_study_summaries(store)))


def _stored(name: str, storage: str | None) -> StoredStudy:
    from hpo.storage.stored import StoredStudy

    return StoredStudy.open(name, open_storage(storage, must_exist=True))


@app.command()
@user_errors
def status(name: NameArg, storage: StorageOpt = None, top: TopOpt = 5) -> None:
    """Trial counts by state, the best value, and a table of the best trials."""
    from hpo.summary import status_line, trials_table

    for study in _stored(name, storage).selected:
        out.print(status_line(study), trials_table(study, top), sep="\n")


@app.command()
@user_errors
def best(name: NameArg, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """The best trial of each of the study's studies (numbers rounded; --json: exact)."""
    from hpo.storage.stored import best_summary
    from hpo.summary import best_lines

    result = {study.study_name: best_summary(study) for study in _stored(name, storage).selected}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    for study_name, summary in result.items():
        out.print(*best_lines(study_name, summary), sep="\n", highlight=False)


@app.command()
@user_errors
def dashboard(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
) -> None:
    """optuna-dashboard on the storage, with trial model files from the artifact store.

    It has no login and can delete studies: --host 0.0.0.0 exposes it to the network.
    """
    from hpo.dashboard import dashboard_lines, serve_dashboard

    store = open_storage(storage, must_exist=True)
    for line in dashboard_lines(storage_url(storage), artifacts, host=host, port=port):
        log(line)
    serve_dashboard(store, open_artifacts(artifacts), host=host, port=port)


# fmt: off
@app.command()
@user_errors
def ensemble(name: NameArg, storage: StorageOpt = None, artifacts: ArtifactsOpt = None,
             method: MethodOpt = None, nn_members: NNMembersOpt = None,
             gbm_members: GBMMembersOpt = None, as_json: JsonOpt = False) -> None:
    # fmt: on
    """Build the ensemble from the best saved trials, store and show its leaderboard."""
    from hpo.ensemble.selection import ensemble_stored
    from hpo.summary import leaderboard_table

    found, report = ensemble_stored(
        _stored(name, storage), open_artifacts(artifacts), require_useful=False,
        method=method, nn_members=nn_members, gbm_members=gbm_members,
    )  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(report.leaderboard.to_json(), indent=2) + "\n")
        return
    out.print(leaderboard_table(found.name, report.leaderboard, found.spec.ensemble.method))


@app.command()
@user_errors
def report(name: NameArg, out_path: ReportOpt = None, storage: StorageOpt = None) -> None:
    """One self-contained HTML file with the plots of the study (and its ensemble)."""
    from hpo.report import write_report

    found = _stored(name, storage)
    path = write_report(list(found.selected), out_path or Path(f"{name}-report.html"), title=name)
    out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def export(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to write")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    method: MethodOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle at --out")] = False,
    fmt: FormatOpt = "bundle",
) -> None:
    """Write the study's ensemble (the spec's method, or --method) as a self-contained bundle."""
    from hpo.ensemble.bundle import check_out_dir, export_stored
    from hpo.ensemble.selection import ensemble_stored

    check_out_dir(out_dir, force=force)
    stored, store = _stored(name, storage), open_artifacts(artifacts)
    found, report = ensemble_stored(stored, store, method=method)
    manifest = export_stored(found, report, out_dir, force=force, fmt=fmt)
    test = report.leaderboard.ensemble_row().test_metric
    log(f"{found.name}: {report.method} ensemble of {len(manifest.members)} members, "
        f"test {manifest.metric} {test:.4f}")  # fmt: skip
    out.print(str(out_dir), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def predict(
    bundle: BundleArg,
    input_path: InputOpt,
    output: OutputOpt = None,
    proba: ProbaOpt = False,
    engine: EngineOpt = "auto",
) -> None:
    """Predict with an exported bundle alone (no database), in chunks: flat memory."""
    from hpo.ensemble.onnx_runtime import predict_with_engine

    if predict_with_engine(bundle, input_path, output, proba=proba, engine=engine):
        return
    from hpo.ensemble.estimator import load_ensemble
    from hpo.ensemble.predict_files import predict_to_csv

    predict_to_csv(load_ensemble(bundle), input_path, output, proba=proba)


@data_app.command("fetch")
@user_errors
def data_fetch(dataset: DatasetArg, directory: DirOpt = Path("data")) -> None:
    """Download the original gzipped IDX files (needs the internet)."""
    from hpo.data.idx import fetch

    out.print(f"{dataset}: {fetch(dataset, directory)}")


def main() -> None:
    app()
