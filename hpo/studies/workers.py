"""Worker processes: each runs ``run_spec`` against the shared storage, nothing else.

``hpo worker`` is one of them, on any machine (:func:`hpo.studies.launch.run_worker`). ``hpo run
--workers N`` starts N local ones as Python subprocesses (:func:`hpo.studies.launch.child_main`, not
the CLI), splits the
CPU threads (and the GPUs) between them, and watches the storage for their combined
progress: the storage is the only channel between workers, exactly as between machines.
A local worker that fails writes its reason to a file of its own (``HPO_WORKER_FAILURE``)
and exits non-zero; the parent reads that file, never the worker's output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import optuna

from hpo.errors import HpoError
from hpo.models.threads import available_cpus
from hpo.storage.backend import mask_text
from hpo.studies.parallel import INTERRUPTS

FAILURE_ENV = "HPO_WORKER_FAILURE"  # where a local worker writes why it failed

POLL_S = 1.0  # how often `hpo run --workers` reads progress from the storage
STOP_S = 60.0  # how long stopped workers get to mark their trials FAIL before being killed


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every device."""
    environ = dict(os.environ) if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(index: int, n_workers: int, *, cpus: int, gpus: Sequence[str]) -> dict[str, str]:
    """Environment for local worker ``index`` of ``n_workers``: its share of the CPU threads,
    and one GPU of its own when there are several (round robin when workers outnumber
    them). With one GPU every worker shares it, so CUDA_VISIBLE_DEVICES is left alone."""
    env = {"OMP_NUM_THREADS": str(threads_per_worker(n_workers, cpus))}
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def threads_per_worker(n_workers: int, cpus: int) -> int:
    return max(1, cpus // n_workers)


def pin_threads(threads: int | None) -> None:
    """Pin this worker's training threads (torch's and XGBoost's): hpo.models.threads reads
    ``OMP_NUM_THREADS`` at every trial."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) stops this process like Ctrl-C, with its cleanup: the
    parent of local workers stops them rather than leave them orphaned. (Workers
    themselves use :data:`hpo.studies.parallel.INTERRUPTS`.)"""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[str]
    failure_file: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    reader: threading.Thread | None = None

    def reason(self) -> str:
        """Why it failed: its own failure report, else the last line it printed, as is."""
        try:
            reported = self.failure_file.read_text(encoding="utf-8").strip()
        except OSError:
            reported = ""
        return reported or (self.tail[-1] if self.tail else "no output")


@dataclass(frozen=True)
class WorkerJob:
    """What a local worker runs (argv of :func:`child_main`; never the storage URL)."""

    spec_path: str
    threads: int
    artifacts_path: str | None = None
    trials: int | None = None
    timeout: float | None = None


class LocalWorkers:
    """N worker subprocesses on this machine, their output forwarded line by line.

    The storage URL reaches them through ``HPO_STORAGE``, not argv: a password in argv is
    visible to every user of the machine in ``ps``.
    """

    def __init__(
        self,
        spec_path: Path,
        n_workers: int,
        *,
        storage_url: str,
        artifacts_path: str | None = None,
        trials: int | None = None,
        timeout: float | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.spec_path, self.n_workers = spec_path, n_workers
        self.storage_url, self.artifacts_path = storage_url, artifacts_path
        self.trials, self.timeout = trials, timeout
        self.log = log
        self.workers: list[_Worker] = []
        self.reports = Path(tempfile.mkdtemp(prefix="hpo-workers-"))

    def command(self, threads: int) -> list[str]:
        job = WorkerJob(
            str(self.spec_path), threads, self.artifacts_path, self.trials, self.timeout
        )
        code = "from hpo.studies.launch import child_main; child_main()"
        return [sys.executable, "-c", code, json.dumps(asdict(job))]

    def start(self) -> None:
        cpus, gpus = available_cpus(), visible_gpus()
        for index in range(self.n_workers):
            failure_file = self.reports / f"worker-{index}.txt"
            env = {
                **os.environ,
                **worker_env(index, self.n_workers, cpus=cpus, gpus=gpus),
                "HPO_STORAGE": self.storage_url,
                FAILURE_ENV: str(failure_file),
                "PYTHONUNBUFFERED": "1",
            }
            proc = subprocess.Popen(
                self.command(threads_per_worker(self.n_workers, cpus)),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # Its own session: a terminal's Ctrl-C reaches only us, and we pass exactly
                # one SIGINT on. A second one would hit the worker while it records the FAIL.
                start_new_session=True,
            )
            worker = _Worker(index, proc, failure_file)
            worker.reader = threading.Thread(target=self._forward, args=(worker,), daemon=True)
            worker.reader.start()
            self.workers.append(worker)

    def _forward(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        for raw in worker.proc.stdout:
            line = mask_text(raw.rstrip(), self.storage_url)
            if not line:
                continue
            worker.tail.append(line)
            self.log(f"worker {worker.index}: {line}")

    def wait(self, on_poll: Callable[[], None] = lambda: None) -> None:
        """Wait for every worker, calling ``on_poll`` each second; on Ctrl-C stop them all.

        Raises:
            HpoError: a worker failed; its own failure report, or the last line it printed.
            KeyboardInterrupt: after the workers have stopped.
        """
        try:
            # A Ctrl-C that lands in a finalizer (while on_poll reads the study, say) is
            # dropped by Python: kept, and raised at the next poll.
            with INTERRUPTS.keeping_dropped():
                while alive := [w for w in self.workers if w.proc.poll() is None]:
                    INTERRUPTS.check()
                    on_poll()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        alive[0].proc.wait(timeout=POLL_S)  # back at once when the last ends
                INTERRUPTS.check()
        except BaseException:  # Ctrl-C, or a failure here: never leave them running alone
            try:
                self.stop()
            except KeyboardInterrupt:  # a second Ctrl-C: do not wait for them
                self.kill()
            raise
        on_poll()
        for w in self.workers:
            if w.reader is not None:
                w.reader.join()
        failed = [w for w in self.workers if w.proc.returncode != 0]
        reasons = [mask_text(w.reason(), self.storage_url) for w in failed]
        shutil.rmtree(self.reports, ignore_errors=True)
        if failed:
            w, reason = failed[0], reasons[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise HpoError(f"worker {w.index} exited with code {w.proc.returncode}: {reason}{more}")

    def stop(self) -> None:
        """One SIGINT each (their trials end as FAIL), then SIGKILL for any still alive."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_S
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """SIGKILL: a killed worker's RUNNING trial is failed (and retried) once its heartbeat
        is older than the grace period, by the next worker that looks."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def quiet_optuna() -> None:
    """hpo's own progress replaces Optuna's per-trial lines; a failing trial's exception is
    re-raised by Optuna anyway, so its WARNING-level traceback would only say it twice."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").propagate = False
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
