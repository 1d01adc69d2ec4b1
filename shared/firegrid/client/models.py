"""Small models for the demo and tests (any torch model whose forward pass exports works)."""

from __future__ import annotations

import torch


class DigitsCNN(torch.nn.Module):
    """A small CNN for 8x8 digits given as flat 64-feature rows."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.fc = torch.nn.Linear(channels * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], 1, 8, 8)
        features = torch.nn.functional.max_pool2d(torch.relu(self.conv(images)), 2)
        return self.fc(features.flatten(1))
