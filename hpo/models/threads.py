"""CPU threads for training, chosen so that a busy machine does not make a trial collapse.

PyTorch's OpenMP threads spin at every parallel region until all of them arrive. With as
many threads as cores, one other busy process leaves one thread without a core of its own
and every region waits for it: on 2 cores a digits trial ran 3 to 19 times slower with 2
threads than with 1. OpenMP's passive wait policy or a shorter spin did not help (they
cost as much on a quiet machine as they saved on a busy one; benchmarks/busy_machine.py).
So hpo picks the count instead:

- small data (the usual table): one thread, which is as fast as several even on a quiet
  machine, since the ops are too small to split;
- large data: as many threads as cores are idle when the trial starts, measured from
  ``/proc/stat`` over a tenth of a second (nothing next to a trial of seconds or more).

An ``OMP_NUM_THREADS`` set by the user (or by ``hpo run --workers``) or ``--threads`` wins.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Training rows x input features below which one thread is as fast as several.
SMALL_DATA = 2_000_000
SAMPLE_S = 0.1  # how long idle cores are measured


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    return len(os.sched_getaffinity(0))


def idle_cpus(sample_s: float = SAMPLE_S) -> float:
    """How many cores the machine left idle over the last ``sample_s`` seconds."""

    def times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; all but guest time

    try:
        idle0, total0 = times()
        time.sleep(sample_s)
        idle1, total1 = times()
    except (OSError, ValueError, IndexError):  # not Linux: assume a quiet machine
        return float(available_cpus())
    if total1 <= total0:
        return float(available_cpus())
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def default_threads(n_rows: int, n_features: int) -> int:
    """One thread for small data; for large data, the cores idle right now (at least one)."""
    if n_rows * n_features < SMALL_DATA:
        return 1
    return max(1, min(available_cpus(), round(idle_cpus())))


def pinned_threads() -> int | None:
    """The thread count the user pinned with ``OMP_NUM_THREADS``, if any."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(n_rows: int, n_features: int) -> int:
    """Threads for one trial on ``n_rows x n_features``: ``OMP_NUM_THREADS`` (which
    ``hpo worker --threads`` sets) when pinned, else :func:`default_threads`, measured
    again at every call (a neighbour may have come or gone)."""
    return pinned_threads() or default_threads(n_rows, n_features)


def configure_threads(n_rows: int, n_features: int) -> int:
    """Set torch's intra-op threads for one trial (see :func:`choose_threads`); returns it."""
    import torch

    threads = choose_threads(n_rows, n_features)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
