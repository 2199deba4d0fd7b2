"""The ``hpo`` command: a thin Typer layer over the library.

Results go to stdout; progress and errors to stderr. An :class:`HpoError` becomes one
``Error: ...`` line and exit code 1; Ctrl-C exits 130 with the database left consistent.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import optuna
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo.errors import HpoError
from hpo.storage import mask_text, mask_url, open_artifacts, open_storage, storage_url

if TYPE_CHECKING:
    from hpo.spec import StudySpec

app = typer.Typer(
    help="Hyperparameter optimization for PyTorch MLPs and XGBoost, on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
if not out.is_terminal:  # piped or captured: no need to wrap tables at 80 columns
    out = Console(width=160)
err = Console(stderr=True, soft_wrap=True)  # log lines are not wrapped at 80 columns

F = TypeVar("F", bound=Callable[..., Any])

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="SQLAlchemy URL or grpc://HOST:PORT [env: HPO_STORAGE]"),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts", help="Artifact directory [env: HPO_ARTIFACTS; default storage/artifacts]"
    ),
]


def user_errors(fn: F) -> F:
    """Turn errors a user can cause into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HpoError as e:
            # No password of a storage URL reaches the terminal, whoever wrote e: this
            # command's URL is parsed, any other URL in the text is masked too.
            url = storage_url(kwargs.get("storage"))
            message = escape(mask_text(str(e), url))
            err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("Interrupted: finished trials are kept; run again to continue.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_optuna() -> None:
    """Our own progress replaces Optuna's per-trial lines; a failing trial's exception is
    re-raised by Optuna anyway, so its WARNING-level traceback would only say it twice."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").propagate = False
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@app.command()
@user_errors
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    trials: Annotated[
        int | None, typer.Option(help="Finished trials to reach (overrides the spec)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds for this run (overrides the spec)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Keep the existing studies under a dated name and start new ones"
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Local worker processes on the study, CPU threads split between them"
        ),
    ] = 1,
) -> None:
    """Tune the NN and GBM studies of SPEC (resumed and topped up), then build the ensemble."""
    from hpo.spec import check_overrides, load_spec

    _quiet_optuna()
    spec, base_dir = load_spec(spec_path)
    check_overrides(spec, trials=trials, timeout=timeout)
    prepared = workers > 1
    if prepared:
        _prepare_studies(spec, storage, fresh, trials)  # once, before the workers start
        timeout = _run_workers(spec, spec_path, workers, storage, artifacts, trials, timeout, quiet)
        quiet = True  # the workers' progress was shown; what follows only finishes the run
    # Imported after the workers start: torch takes seconds to import.
    from hpo.parallel import INTERRUPTS
    from hpo.runner import run_spec, study_targets
    from hpo.summary import (
        best_trials,
        leaderboard_table,
        objective_name,
        trial_summary,
        trials_table,
    )

    # Ctrl-C: the training trial ends as FAIL at once, no storage write is cut short, and a
    # signal that Python would drop (raised inside a finalizer) is kept, not lost.
    with INTERRUPTS.installed(), _trial_progress(study_targets(spec, trials), quiet) as on_trial:
        result = run_spec(
            spec,
            base_dir,
            storage_url=storage,
            artifacts_path=artifacts,
            trials=trials,
            timeout=timeout,
            on_trial=on_trial,
            log=lambda message: err.print(message, highlight=False),
            fresh=fresh,
            prepared=prepared,
        )
    for study in (result.nn_study, result.gbm_study):
        ranked = best_trials(study, 1)  # inside the current search space
        if ranked:
            out.print(trials_table(study))
            best = trial_summary(ranked[0])
            out.print(
                f"Best trial #{best['number']}: {objective_name(study)} {best['value']:.4f} "
                f"{best['metrics']}"
            )
    out.print(leaderboard_table(spec.name, result.leaderboard))


def _prepare_studies(spec: StudySpec, storage: str | None, fresh: bool, trials: int | None) -> None:
    """``--fresh``: archive the studies; otherwise refuse a spec whose data changed. Then
    say which targets are met already."""
    from hpo.resume import archive_studies, check_rerun, note_target_met
    from hpo.runner import open_spec_storage, study_targets

    store = open_spec_storage(spec, storage)

    def log(line: str) -> None:
        err.print(line, highlight=False)

    if fresh:
        archive_studies(spec, store, log)
    else:
        check_rerun(spec, store)  # the workers say what changed in the search space
    for (name, target), key in zip(
        study_targets(spec, trials).items(), ("nn.trials", "gbm.trials"), strict=True
    ):
        note_target_met(store, name, target, key, log)


def _run_workers(
    spec: StudySpec,
    spec_path: Path,
    n_workers: int,
    storage: str | None,
    artifacts: str | None,
    trials: int | None,
    timeout: float | None,
    quiet: bool,
) -> float | None:
    """Run N local workers to the targets; returns what is left of ``timeout`` after them."""
    from hpo.storage import open_artifacts
    from hpo.workers import LocalWorkers, stop_on_sigterm

    stop_on_sigterm()  # stop the workers too, not leave them orphaned
    url = storage_url(storage)
    store = open_storage(url)  # a bad URL fails here, once, not in N workers
    open_artifacts(artifacts)
    err.print(
        f"{spec.nn_study_name}: {n_workers} workers, storage {escape(mask_url(url))}",
        highlight=False,
    )
    if url.startswith("sqlite") and n_workers > 2:
        err.print(f"note: SQLite serves 2 workers well; {n_workers} want PostgreSQL (README)")
    pool = LocalWorkers(
        spec_path,
        n_workers,
        storage_url=url,
        artifacts_path=artifacts,
        trials=trials,
        timeout=timeout,
        log=lambda line: err.print(line, highlight=False, markup=False),
    )
    started = time.monotonic()
    pool.start()
    try:
        # Imported once the workers start, alongside them: torch takes seconds to import.
        from hpo.runner import study_targets

        progress = _studies_progress(study_targets(spec, trials), store, quiet)
    except BaseException:
        pool.stop()
        raise
    with progress as poll:
        pool.wait(poll)
    budget = timeout or spec.nn.timeout
    # The run then finishes in this process, tuning at most what the workers left undone
    # (nothing, unless the time ran out) within what is left of the time.
    return None if budget is None else max(budget - (time.monotonic() - started), 1e-3)


class _studies_progress:
    """One Rich bar per study on stderr, read from the storage (for workers elsewhere)."""

    def __init__(
        self, targets: dict[str, int], store: optuna.storages.BaseStorage, quiet: bool
    ) -> None:
        self.store = store
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=err,
            disable=quiet or not err.is_terminal,
        )
        self.tasks = {
            name: self.progress.add_task(name, total=target, best="")
            for name, target in targets.items()
        }

    def __enter__(self) -> Callable[[], None]:
        self.progress.start()
        return self.poll

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def poll(self) -> None:
        from hpo.workers import study_progress

        for name, task in self.tasks.items():
            done, best = study_progress(self.store, name)
            shown = "" if best is None else f"best {best:.4f}"
            self.progress.update(task, completed=done, best=shown)


class _trial_progress:
    """Rich progress bars on stderr, one per study, advanced by an Optuna callback."""

    def __init__(self, targets: dict[str, int], quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=err,
            disable=quiet or not err.is_terminal,
        )
        self.tasks = {
            name: self.progress.add_task(name, total=target, best="")
            for name, target in targets.items()
        }

    def __enter__(self) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
        self.progress.start()
        return self.on_trial

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from hpo.nn_study import count_done

        try:
            best = f"best {study.best_value:.4f}"
        except ValueError:
            best = ""
        if study.study_name in self.tasks:
            self.progress.update(
                self.tasks[study.study_name], completed=count_done(study), best=best
            )
        if not self.progress.live.is_started or self.progress.disable:
            state = trial.state.name.lower()
            value = f" {trial.value:.4f}" if trial.value is not None else ""
            err.print(
                f"{study.study_name} trial {trial.number} {state}{value} {best}", highlight=False
            )


@app.command()
@user_errors
def worker(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    trials: Annotated[
        int | None, typer.Option(help="Finished trials to reach (overrides the spec)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds for this worker (overrides the spec)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for training [default: all]")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Join the study in SPEC (creating it if needed) and run trials until it reaches its target.

    Start one on each machine, all with the same --storage (PostgreSQL, or grpc:// through
    `hpo storage-proxy`) and --artifacts (a shared directory).
    """
    from hpo.parallel import INTERRUPTS, trial_counts, worker_id
    from hpo.runner import run_spec, study_targets
    from hpo.spec import check_overrides, load_spec
    from hpo.workers import pin_threads

    _quiet_optuna()
    pin_threads(threads)
    spec, base_dir = load_spec(spec_path)
    check_overrides(spec, trials=trials, timeout=timeout)
    targets = study_targets(spec, trials)
    err.print(f"{spec.name}: worker {worker_id()}", highlight=False)
    # Ctrl-C and SIGTERM: the training trial ends as FAIL, no storage write is cut short.
    with INTERRUPTS.installed(), _trial_progress(targets, quiet) as on_trial:
        result = run_spec(
            spec,
            base_dir,
            storage_url=storage,
            artifacts_path=artifacts,
            trials=trials,
            timeout=timeout,
            on_trial=on_trial,
            log=lambda message: err.print(message, highlight=False),
            worker=True,
        )
    for study in (result.nn_study, result.gbm_study):
        done, _ = trial_counts(study)
        trials_of = study.get_trials(deepcopy=False)
        mine = sum(t.user_attrs.get("worker") == worker_id() for t in trials_of)
        out.print(
            f"{study.study_name}: {done}/{targets[study.study_name]} finished trials, "
            f"{mine} run by this worker"
        )


@app.command("storage-proxy")
@user_errors
def storage_proxy(
    storage: StorageOpt = None,
    port: Annotated[int, typer.Option(help="Port to listen on")] = 13000,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface)")
    ] = "127.0.0.1",
) -> None:
    """Serve the storage to workers over gRPC: they use --storage grpc://HOST:PORT."""
    from hpo.storage import serve_grpc_proxy
    from hpo.workers import stop_on_sigterm

    _quiet_optuna()
    stop_on_sigterm()
    err.print(
        f"storage proxy for {escape(mask_url(storage_url(storage)))} on grpc://{host}:{port} "
        "(Ctrl-C stops it)",
        highlight=False,
    )
    try:
        serve_grpc_proxy(storage, host=host, port=port)
    except KeyboardInterrupt:
        err.print("storage proxy stopped")


def _studies_for(name: str, store: optuna.storages.BaseStorage) -> list[str]:
    """``digits`` means the studies ``digits-nn`` (and ``digits-gbm``); an exact name is itself."""
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if name in names:
        return [name]
    found = [n for n in names if n in (f"{name}-nn", f"{name}-gbm")]
    if not found:
        known = ", ".join(sorted(names)) or "none"
        raise HpoError(f"no study named {name!r} (studies here: {known})")
    return found


@app.command()
@user_errors
def studies(storage: StorageOpt = None) -> None:
    """List the studies in the storage."""
    from rich.table import Table

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    title = f"Studies in {escape(mask_url(storage_url(storage)))}"
    table = Table(title=title, title_justify="left")
    for column in ("study", "trials", "best value", "dataset", "task"):
        table.add_column(column)
    for s in optuna.get_all_study_summaries(store):
        best = (
            f"{s.best_trial.value:.4f}" if s.best_trial and s.best_trial.value is not None else ""
        )
        table.add_row(
            s.study_name,
            str(s.n_trials),
            best,
            str(s.user_attrs.get("dataset", "")),
            str(s.user_attrs.get("task", "")),
        )
    out.print(table)


@app.command()
@user_errors
def status(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits) or a full study name")],
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(help="Rows in the best-trials table")] = 5,
) -> None:
    """Trial counts by state, the best value, and a table of the best trials."""
    from hpo.storage import load_study
    from hpo.summary import objective_name, state_counts, trials_table

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    for study_name in _studies_for(name, store):
        study = load_study(study_name, store)
        counts = ", ".join(f"{k.lower()} {v}" for k, v in state_counts(study).items())
        try:
            best = (
                f"best {objective_name(study)} {study.best_value:.4f} "
                f"(trial {study.best_trial.number})"
            )
        except ValueError:
            best = "no completed trial yet"
        out.print(f"[bold]{study_name}[/]: {counts or 'no trials'}; {best}")
        out.print(trials_table(study, top))


@app.command()
@user_errors
def best(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits) or a full study name")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """The best trial of each of the study's studies."""
    from hpo.storage import load_study
    from hpo.summary import objective_name, trial_summary

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    result: dict[str, Any] = {}
    for study_name in _studies_for(name, store):
        study = load_study(study_name, store)
        try:
            result[study_name] = trial_summary(study.best_trial) | {
                "objective": objective_name(study)
            }
        except ValueError:
            raise HpoError(f"{study_name}: no completed trial yet") from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    for study_name, summary in result.items():
        out.print(
            f"[bold]{study_name}[/] best trial #{summary['number']}: "
            f"{summary['objective']} {summary['value']:.4f}"
        )
        out.print(f"  metrics: {summary['metrics']}")
        out.print(f"  architecture: {summary['architecture']}")
        out.print(f"  params: {summary['params']}")


@app.command()
@user_errors
def dashboard(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
) -> None:
    """optuna-dashboard on the storage, with trial model files from the artifact store."""
    from hpo.dashboard import serve_dashboard
    from hpo.storage import artifacts_dir, open_artifacts

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    folder = artifacts_dir(artifacts)
    if not folder.is_dir():
        err.print(f"Warning: no artifact directory at {folder}; model files will not show.")
    url_host = f"[{host}]" if ":" in host else host
    err.print(
        f"optuna-dashboard on http://{url_host}:{port}/dashboard "
        f"(storage {escape(mask_url(storage_url(storage)))}, artifacts {folder}); Ctrl-C stops it.",
        highlight=False,
        soft_wrap=True,
    )
    serve_dashboard(store, open_artifacts(artifacts), host=host, port=port)


@app.command()
@user_errors
def ensemble(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits)")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    method: Annotated[
        str | None, typer.Option(help="average or greedy (the one export writes)")
    ] = None,
    nn_members: Annotated[int | None, typer.Option(help="Best NN trials to use")] = None,
    gbm_members: Annotated[int | None, typer.Option(help="Best GBM trials to use")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Build the ensemble from the best saved trials, store and show its leaderboard."""
    from hpo.ensemble import build_ensemble, ensemble_config, open_stored, store_leaderboard
    from hpo.spec import check_overrides
    from hpo.summary import leaderboard_table

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    stored = open_stored(name, store)
    check_overrides(stored.spec, nn_members=nn_members, gbm_members=gbm_members)
    config = ensemble_config(
        stored.spec, method=method, nn_members=nn_members, gbm_members=gbm_members
    )
    report = build_ensemble(
        stored.spec.name,
        stored.nn_study,
        stored.gbm_study,
        stored.data,
        config,
        open_artifacts(artifacts),
        metric=stored.spec.metric,
    )
    store_leaderboard(stored.nn_study, report.leaderboard)
    if as_json:
        sys.stdout.write(json.dumps(report.leaderboard, indent=2) + "\n")
        return
    out.print(leaderboard_table(stored.spec.name, report.leaderboard))


@app.command()
@user_errors
def report(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits) or a full study name")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write [default: NAME-report.html]")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """One self-contained HTML file with the plots of the study (and its ensemble)."""
    from hpo.report import write_report
    from hpo.storage import load_study

    _quiet_optuna()
    store = open_storage(storage, must_exist=True)
    studies = [load_study(n, store) for n in _studies_for(name, store)]
    path = write_report(studies, out_path or Path(f"{name}-report.html"), title=name)
    out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def export(
    name: Annotated[str, typer.Argument(help="Study spec name (e.g. digits)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to write")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle at --out")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="bundle, or onnx: the bundle plus model.onnx")
    ] = "bundle",
) -> None:
    """Write the study's ensemble (the spec's method) as a self-contained bundle."""
    from hpo.bundle import check_out_dir, export_bundle, target_name
    from hpo.ensemble import build_ensemble, open_stored, store_leaderboard
    from hpo.sanity import check_studies_have_values, check_useful

    _quiet_optuna()
    check_out_dir(out_dir, force=force)
    store = open_storage(storage, must_exist=True)
    stored = open_stored(name, store)
    check_studies_have_values(stored.spec.name, [stored.nn_study, stored.gbm_study])
    report = build_ensemble(
        stored.spec.name,
        stored.nn_study,
        stored.gbm_study,
        stored.data,
        stored.spec.ensemble,
        open_artifacts(artifacts),
        metric=stored.spec.metric,
    )
    store_leaderboard(stored.nn_study, report.leaderboard)
    check_useful(stored.spec.name, report.leaderboard)  # never export a no-skill ensemble
    extra = {}
    if fmt != "bundle":
        from hpo.onnx_export import onnx_files  # needs the onnx extra

        extra = onnx_files(report, stored.data, fmt)
    manifest = export_bundle(
        report,
        stored.data,
        out_dir,
        force=force,
        target=target_name(stored.spec.data),
        extra_files=extra,
    )
    row = next(r for r in report.leaderboard["rows"] if r["name"] == f"ensemble ({report.method})")
    err.print(
        f"{stored.spec.name}: {report.method} ensemble of {len(manifest.members)} members, "
        f"test {manifest.metric} {row['test_metric']:.4f}",
        highlight=False,
    )
    out.print(str(out_dir), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def predict(
    bundle: Annotated[Path, typer.Argument(metavar="DIR", help="Bundle directory (hpo export)")],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", help="Raw features: .csv or .parquet (columns by name), .npy or IDX"
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", help="CSV to write [default: stdout]")
    ] = None,
    proba: Annotated[
        bool, typer.Option("--proba", help="Add one probability column per class")
    ] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="auto, native or onnx (auto: onnx without torch)")
    ] = "auto",
) -> None:
    """Predict with an exported bundle alone: no database, no artifact store.

    Large inputs are read and predicted in chunks, so memory stays flat as rows grow.
    """
    from hpo.onnx_runtime import predict_with_engine

    if predict_with_engine(bundle, input_path, output, proba=proba, engine=engine):
        return
    from hpo.estimator import load_ensemble
    from hpo.predict_files import predict_to_csv

    predict_to_csv(load_ensemble(bundle), input_path, output, proba=proba)


@data_app.command("fetch")
@user_errors
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="mnist or fashion-mnist")],
    directory: Annotated[Path, typer.Option("--dir", help="Where the dataset folder goes")] = Path(
        "data"
    ),
) -> None:
    """Download the original gzipped IDX files (needs the internet)."""
    from hpo.idx import fetch

    path = fetch(dataset, directory)
    out.print(f"{dataset}: {path}")


def main() -> None:
    app()
