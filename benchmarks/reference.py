"""The plain-Optuna reference, in the style of Optuna's official PyTorch example.

A per-item image dataset converted to float tensors one sample at a time, a
``torch.utils.data.DataLoader``, and data moved to the device every batch: the script
people write by hand, which hpo has to beat.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


class ImageItems(torch.utils.data.Dataset):
    """Like torchvision's FashionMNIST with ``ToTensor()``: one uint8 image at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.tensor(self.images[i], dtype=torch.float32).div(255.0)
        return image.view(-1), int(self.labels[i])


def course_model() -> nn.Sequential:
    """784-256-BN-128-128-10: the course's Fashion-MNIST network, log-softmax output."""
    return nn.Sequential(
        nn.Linear(784, 256),
        nn.ELU(),
        nn.BatchNorm1d(256),
        nn.Linear(256, 128),
        nn.SELU(),
        nn.Linear(128, 128),
        nn.SELU(),
        nn.Linear(128, 10),
        nn.LogSoftmax(dim=1),
    )


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, device: str
) -> None:
    model.train()
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: str) -> float:
    model.eval()
    correct = total = 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        correct += int((model(data).argmax(1) == target).sum())
        total += len(target)
    return correct / total


def reference_objective(
    space_suggest,
    build_model,
    train_loader,
    valid_loader,
    test_loader,  # type: ignore[no-untyped-def]
    device: str,
    epochs: int,
):
    """The official example's objective: suggest, train per epoch over the DataLoader,
    report validation accuracy, prune with the study's pruner, return the accuracy."""

    def objective(trial):  # type: ignore[no-untyped-def]
        params = space_suggest(trial)
        model = build_model(params).to(device)
        optimizer = {
            "sgd": lambda p: torch.optim.SGD(p, lr=params["learning_rate"]),
            "momentum": lambda p: torch.optim.SGD(p, lr=params["learning_rate"], momentum=0.9),
            "rmsprop": lambda p: torch.optim.RMSprop(p, lr=params["learning_rate"]),
            "adam": lambda p: torch.optim.Adam(p, lr=params["learning_rate"]),
            "nadam": lambda p: torch.optim.NAdam(p, lr=params["learning_rate"]),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=params["learning_rate"]),
        }[params["optimizer"]](model.parameters())
        loaders = train_loader(params["batch_size"])
        best = 0.0
        for epoch in range(epochs):
            train_epoch(model, optimizer, loaders, device)
            val_accuracy = accuracy(model, valid_loader, device)
            best = max(best, val_accuracy)
            trial.report(val_accuracy, epoch)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
        trial.set_user_attr("test_accuracy", accuracy(model, test_loader, device))
        return val_accuracy

    return objective
