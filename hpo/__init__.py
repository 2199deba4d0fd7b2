"""hpo: tune PyTorch MLPs and XGBoost with Optuna, average the best into an ensemble."""

from __future__ import annotations

from hpo.errors import HpoError

__version__ = "0.1.0"
__all__ = ["HpoError", "__version__"]
