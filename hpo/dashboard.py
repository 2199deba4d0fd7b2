"""optuna-dashboard on the study storage, with the artifact store attached."""

from __future__ import annotations

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError
from hpo.storage.backend import artifacts_dir, mask_url

DEFAULT_HOST = "127.0.0.1"  # loopback: the dashboard can edit and delete studies, no login
DEFAULT_PORT = 8080


def serve_dashboard(
    storage: optuna.storages.BaseStorage,
    artifacts: FileSystemArtifactStore,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> None:
    """Serve optuna-dashboard until Ctrl-C.

    Open ``storage`` with :func:`hpo.storage.backend.open_storage`, so that SQLite gets the same
    WAL mode and busy timeout as the run writing to it.

    Raises:
        HpoError: the port cannot be bound (taken, privileged, not an address of this host).
    """
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifacts)
    except OSError as e:
        raise HpoError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}") from None


def dashboard_lines(url: str, artifacts: str | None, *, host: str, port: int) -> list[str]:
    """What ``hpo dashboard`` says before serving: where, and a missing artifact folder."""
    folder = artifacts_dir(artifacts)
    lines = [] if folder.is_dir() else [
        f"Warning: no artifact directory at {folder}; model files will not show."
    ]  # fmt: skip
    url_host = f"[{host}]" if ":" in host else host
    lines.append(
        f"optuna-dashboard on http://{url_host}:{port}/dashboard "
        f"(storage {mask_url(url)}, artifacts {folder}); Ctrl-C stops it."
    )
    return lines
