"""Nonlinearities by name, so configs can pick the released code's or the paper's (docs/paper.md §10.1)."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {
    "leaky_relu": lambda: nn.LeakyReLU(0.05),  # the released code's, slope 0.05
    "softplus": nn.Softplus,  # the paper's convolutional layers
    "tanh": nn.Tanh,  # the paper's dense layers
    "sigmoid": nn.Sigmoid,  # the paper's heartbeat MLP
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is unknown; valid choices: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
