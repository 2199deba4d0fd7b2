"""MNIST-style IDX files, read with numpy (no torchvision), and their download."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from hpo.errors import HpoError

# IDX type codes (third byte of the magic number) and the numpy dtypes they stand for.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its own shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise HpoError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise HpoError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    if len(raw) - header != int(np.prod(shape)) * dtype.itemsize:
        raise HpoError(f"{path}: IDX file is truncated or has trailing bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise HpoError(f"{directory}: missing {stem}.gz (an MNIST-style IDX directory)")


def fetch(dataset: str, directory: Path, *, timeout: float = 20.0) -> Path:
    """Download the four original gzipped IDX files of ``dataset`` into ``directory/dataset``.

    Files land under a temporary name and are renamed only when complete, so a failed
    download leaves nothing half-written.
    """
    if dataset not in MIRRORS:
        raise HpoError(f"unknown dataset {dataset!r}; choose one of {', '.join(MIRRORS)}")
    target = directory / dataset
    target.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        name = f"{stem}.gz"
        if (target / name).is_file():
            continue
        url = MIRRORS[dataset] + name
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out)
            os.replace(tmp, target / name)
        except (urllib.error.URLError, OSError) as e:
            Path(tmp).unlink(missing_ok=True)
            reason = getattr(e, "reason", e)
            raise HpoError(
                f"cannot download {url} ({reason}); is the internet reachable? "
                f"Copy the IDX files into {target} instead"
            ) from None
    return target
