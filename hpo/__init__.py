"""hpo: tune PyTorch MLPs and XGBoost with Optuna, average the best into an ensemble."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError

if TYPE_CHECKING:
    from hpo.ensemble.onnx_runtime import load_ensemble

__version__ = "0.1.0"
__all__ = ["HpoError", "__version__", "load_ensemble"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import hpo` (and the CLI) should not pay for torch and xgboost.
    if name == "load_ensemble":
        from hpo.ensemble.onnx_runtime import (
            load_ensemble,  # engine="auto": native, or onnx if no torch
        )

        return load_ensemble
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
