"""Epoch time of the course's Fashion-MNIST MLP: hpo's trainer with the fast optimizer
(fused Adam where PyTorch has it), with the plain one (``foreach=False, fused=False``, what
hpo used before issue 14), and the reference script.

    python benchmarks/trainer_throughput.py [--batches 32 128 1024] [--repeats 3] [--threads 1]

Plain and fast epochs alternate on the same data, so their ratio holds on a noisy machine;
each keeps its fastest epoch. Also measures the machine's fp32 matmul rate, and counts the
network's training FLOPs to say how close to that rate the trainer gets. Without the
Fashion-MNIST files (``../shared/data``) it trains on random data of the same shape.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import FASHION, write_result
from reference import ImageItems, course_model
from reference import train_epoch as reference_epoch

from hpo.data.idx import read_idx
from hpo.models.mlp import MLPSpec, build_mlp
from hpo.models.train import loss_function, make_optimizer, train_epoch

COURSE_LAYERS = [
    {
        "width": 256,
        "activation": "elu",
        "initializer": "he_normal",
        "normalization": "batchnorm_after",
    },
    {"width": 128, "activation": "selu", "initializer": "lecun_normal", "normalization": "none"},
    {"width": 128, "activation": "selu", "initializer": "lecun_normal", "normalization": "none"},
]
WIDTHS = [784, 256, 128, 128, 10]


def train_flops_per_sample() -> int:
    """Matmul FLOPs: forward 2·in·out per layer; backward 2·in·out for the weight gradient
    plus 2·in·out for the input gradient (not needed for the first layer)."""
    pairs = list(itertools.pairwise(WIDTHS))
    forward = sum(2 * i * o for i, o in pairs)
    backward = sum(2 * i * o for i, o in pairs) + sum(2 * i * o for i, o in pairs[1:])
    return forward + backward


def matmul_gflops(device: str, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fashion(rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST's first training rows as uint8 images and labels, else random ones."""
    images_file = FASHION / "train-images-idx3-ubyte.gz"
    if images_file.exists():
        images = read_idx(images_file)[:rows]
        labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:rows]
        return images, labels, "Fashion-MNIST"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
    return images, rng.integers(0, 10, rows).astype(np.uint8), "random 28x28"


def time_hpo(
    images: np.ndarray, labels: np.ndarray, batch: int, device: str, repeats: int
) -> dict[str, float]:
    """The fastest epoch of hpo's trainer with the plain and with the fast optimizer."""
    x = torch.as_tensor(images.reshape(len(images), -1) / 255.0, dtype=torch.float32)
    x, y = x.to(device), torch.as_tensor(labels, dtype=torch.int64).to(device)
    spec = MLPSpec.from_params(
        {
            "dropout": 0.0,
            "l2": 0.0,
            "learning_rate": 1e-3,
            "optimizer": "adam",
            "batch_size": batch,
        },
        layers=COURSE_LAYERS,
    )
    loss_fn = loss_function("multiclass")
    runs = {}
    for name, fast in (("plain", False), ("fast", True)):
        torch.manual_seed(0)
        model = build_mlp(spec, 784, 10).to(device)
        optimizer = make_optimizer(spec, model, fast=fast)
        g = torch.Generator(device=device).manual_seed(0)
        train_epoch(model, optimizer, loss_fn, x, y, batch, g)  # warm-up
        runs[name] = (model, optimizer, g)
    times: dict[str, list[float]] = {"plain": [], "fast": []}
    for _ in range(repeats):
        for name, (model, optimizer, g) in runs.items():
            _sync(device)
            start = time.perf_counter()
            float(train_epoch(model, optimizer, loss_fn, x, y, batch, g))
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def time_reference(
    images: np.ndarray, labels: np.ndarray, batch: int, device: str, repeats: int
) -> float:
    loader = DataLoader(ImageItems(images, labels), batch_size=batch, shuffle=True)
    model = course_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        reference_epoch(model, optimizer, loader, device)
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1, help="0 skips it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (issue 14: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_before = os.getloadavg()[0]  # other processes on the machine slow every number here
    rows = 54000
    images, labels, source = fashion(rows)
    flops_epoch = train_flops_per_sample() * rows
    peak = matmul_gflops(device)
    print(f"{device}: fp32 matmul {peak:.1f} GFLOP/s; {flops_epoch / 1e9:.1f} GFLOP per epoch")
    results = []
    for batch in args.batches:
        hpo_s = time_hpo(images, labels, batch, device, args.repeats)
        row = {
            "batch": batch,
            "plain_epoch_s": round(hpo_s["plain"], 3),
            "fast_epoch_s": round(hpo_s["fast"], 3),
            "fast_speedup": round(hpo_s["plain"] / hpo_s["fast"], 2),
            "hpo_gflops": round(flops_epoch / hpo_s["fast"] / 1e9, 1),
            "hpo_fraction_of_matmul": round(flops_epoch / hpo_s["fast"] / 1e9 / peak, 3),
        }
        if args.reference_repeats:
            ref_s = time_reference(images, labels, batch, device, args.reference_repeats)
            row |= {
                "reference_epoch_s": round(ref_s, 3),
                "speedup": round(ref_s / hpo_s["fast"], 2),
            }
        print(row)
        results.append(row)
    write_result(
        "trainer_throughput",
        {
            "device": device,
            "data": source,
            "matmul_gflops": round(peak, 1),
            "train_gflop_per_epoch": round(flops_epoch / 1e9, 2),
            "rows_per_epoch": rows,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "threads": args.threads,
            "model": "784-256(elu,BN)-128(selu)-128(selu)-10, Adam",
            "rows": results,
        },
    )


if __name__ == "__main__":
    main()
