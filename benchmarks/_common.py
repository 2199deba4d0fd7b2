"""What every benchmark shares: the machine it ran on, and where results go."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` (``<name>-gpu`` when run on a GPU)."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    path = RESULTS / f"{name}{'-gpu' if info['gpu'] else ''}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": info, **payload}, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new database on the tests' PostgreSQL server (started as the tests start it),
    dropped at the end."""
    import psycopg

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import _start_postgres_if_down

    _start_postgres_if_down()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkout_label(path: Path) -> str:
    """A checkout's commit (with its path), for a table that compares two."""
    found = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"{found.stdout.strip() or '?'} ({path})"
