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
