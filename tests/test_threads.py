"""Training threads: one on small data, the idle cores on large data, a pinned count wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hpo.models import threads
from hpo.models.threads import choose_threads, configure_threads, default_threads, idle_cpus


def test_small_data_trains_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "idle_cpus", lambda: 8.0)  # even on an idle machine
    assert default_threads(1437, 64) == 1  # digits
    assert choose_threads(1437, 64) == 1


def test_large_data_takes_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda: 4)
    for idle, expected in ((4.0, 4), (2.6, 3), (1.2, 1), (0.1, 1), (9.0, 4)):
        monkeypatch.setattr(threads, "idle_cpus", lambda idle=idle: idle)
        assert default_threads(54000, 784) == expected


def test_omp_num_threads_pins_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "idle_cpus", lambda: 1.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(54000, 784) == 3 and choose_threads(100, 4) == 3
    before = torch.get_num_threads()
    try:
        assert configure_threads(100, 4) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_idle_cpus_reads_the_machine() -> None:
    idle = idle_cpus(0.05)
    assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_a_busy_neighbour_lowers_the_idle_count() -> None:
    quiet = idle_cpus(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = min(idle_cpus(0.3) for _ in range(3))
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process takes most of a core (other load on the machine may take more).
    assert busy < max(quiet, 1.0) - 0.5
