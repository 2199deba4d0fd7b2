"""What every benchmark shares: the machine it ran on, and where results go."""

from __future__ import annotations

import json
import os
import platform
import time
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
