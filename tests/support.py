"""Small models for tests, loadable as python:support:<factory> specs."""

from __future__ import annotations

import torch
from torch import nn


def linear_model() -> nn.Module:
    """A linear classifier on 3x32x32 images (10 classes): its gradient is the same everywhere."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    net.input_shape = (3, 32, 32)
    return net


def tiny_conv() -> nn.Module:
    """A small untrained conv net with a pooling layer, for decoy tests on other models."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 4),
    )


def not_a_classifier() -> nn.Module:
    """Returns images, not logits."""
    return nn.Identity()
