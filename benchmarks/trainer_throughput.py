"""Epoch time of the course's Fashion-MNIST MLP: hpo's trainer against the reference.

    python benchmarks/trainer_throughput.py [--batches 32 128 1024] [--repeats 3]

Both run in this one process, one after the other per batch size, so their ratio holds
on a noisy machine. Also measures the machine's fp32 matmul rate, and counts the
network's training FLOPs to say how close to that rate each trainer gets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import FASHION, write_result
from reference import ImageItems, course_model
from reference import train_epoch as reference_epoch

from hpo.data.dataset import load_dataset
from hpo.data.idx import read_idx
from hpo.models.mlp import MLPSpec, build_mlp
from hpo.models.train import loss_function, make_optimizer, train_epoch
from hpo.spec import DataSpec

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


def time_hpo(batch: int, device: str, repeats: int) -> float:
    data = load_dataset(
        DataSpec(source="idx", path=str(FASHION), scaling="minmax", validation_fraction=0.1),
        "multiclass",
        Path("."),
        0,
    )
    t = data.tensors(device)
    spec = MLPSpec.from_params(
        {
            "dropout": 0.0,
            "l2": 0.0,
            "learning_rate": 1e-3,
            "optimizer": "nadam",
            "batch_size": batch,
        },
        layers=COURSE_LAYERS,
    )
    model = build_mlp(spec, 784, 10).to(device)
    optimizer, loss_fn = make_optimizer(spec, model), loss_function("multiclass")
    g = torch.Generator(device=device).manual_seed(0)
    train_epoch(model, optimizer, loss_fn, t["train_x"], t["train_y"], batch, g)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        float(train_epoch(model, optimizer, loss_fn, t["train_x"], t["train_y"], batch, g))
        times.append(time.perf_counter() - start)
    return min(times)


def time_reference(batch: int, device: str, repeats: int) -> float:
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:54000]
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:54000]
    loader = DataLoader(ImageItems(images, labels), batch_size=batch, shuffle=True)
    model = course_model().to(device)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
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
    parser.add_argument("--reference-repeats", type=int, default=1)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = 54000
    flops_epoch = train_flops_per_sample() * rows
    peak = matmul_gflops(device)
    print(f"{device}: fp32 matmul {peak:.1f} GFLOP/s; {flops_epoch / 1e9:.1f} GFLOP per epoch")
    results = []
    for batch in args.batches:
        hpo_s = time_hpo(batch, device, args.repeats)
        ref_s = time_reference(batch, device, args.reference_repeats)
        row = {
            "batch": batch,
            "hpo_epoch_s": round(hpo_s, 3),
            "reference_epoch_s": round(ref_s, 3),
            "speedup": round(ref_s / hpo_s, 2),
            "hpo_gflops": round(flops_epoch / hpo_s / 1e9, 1),
            "hpo_fraction_of_matmul": round(flops_epoch / hpo_s / 1e9 / peak, 3),
        }
        print(row)
        results.append(row)
    write_result(
        "trainer_throughput",
        {
            "device": device,
            "matmul_gflops": round(peak, 1),
            "train_gflop_per_epoch": round(flops_epoch / 1e9, 2),
            "rows_per_epoch": rows,
            "model": "784-256(elu,BN)-128(selu)-128(selu)-10, Nadam",
            "rows": results,
        },
    )


if __name__ == "__main__":
    main()
