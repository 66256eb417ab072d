"""The contracts a data set and a network must meet (README, "Bring your own data and code"), checked as a model is
built, before anything is trained or written: a broken one is a ConfigError naming the class and what it lacks.
(A task's contract is checked where it is loaded, dpm.app.trust.)"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from dpm.app.checks import accepted_keys
from dpm.data.base import SPLITS, DataModule
from dpm.errors import ConfigError

CONTRACTS = "README, 'Bring your own data and code'"
NET_ARGUMENTS = ("data_shape", "n_outputs", "T")  # what build passes every network's constructor


def _name(obj: Any) -> str:
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_datamodule_class(dm: DataModule) -> None:
    """Before setup: the class defines make_split (the one method every data set implements)."""
    if type(dm).make_split is DataModule.make_split:
        raise ConfigError(f"dataset {_name(dm)} breaks the DataModule contract ({CONTRACTS}): it must define "
                          "make_split(split) -> float tensor [N, *D] for split in 'train', 'val', 'test'")


def check_splits(dm: DataModule) -> None:
    """After setup: three non-empty floating-point splits [N, *D] of one example shape, the training split finite."""
    shapes = {}
    for split in SPLITS:
        x = dm.splits.get(split)
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
            got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ConfigError(f"dataset {_name(dm)} breaks the DataModule contract ({CONTRACTS}): make_split"
                              f"({split!r}) must give a non-empty float tensor [N, *D]; got {got}")
        shapes[split] = tuple(x.shape[1:])
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"dataset {_name(dm)} breaks the DataModule contract ({CONTRACTS}): the splits must share "
                          f"one example shape; got {shapes}")
    bad = int((~torch.isfinite(dm.splits["train"])).sum())
    if bad:
        raise ConfigError(f"{dm.origin}: the normalised training split holds {bad} NaN or infinite values")


def check_net_class(net_class: Any) -> None:
    """Before instantiation: the constructor takes the arguments build passes (data_shape, n_outputs, T)."""
    keys = accepted_keys(net_class)
    missing = [k for k in NET_ARGUMENTS if keys is not None and k not in keys]
    if missing:
        raise ConfigError(f"net {_name(net_class)} breaks the network contract ({CONTRACTS}): its constructor must "
                          f"take {list(NET_ARGUMENTS)} (filled in by dpm); {missing} missing")


def check_net(net: nn.Module, n_outputs: int, dm: DataModule, T: int) -> None:
    """One forward pass on two training examples: net(xt [2, *D], t [2] long in 1..T) must give a finite tensor
    [2, n_outputs, *D] (docs/paper.md §2.4). In eval mode and without gradients, so nothing it holds changes."""
    x = dm.splits["train"][:2]
    t = torch.tensor([2, T], dtype=torch.long)[: len(x)]
    expected = (len(x), n_outputs, *x.shape[1:])
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x, t)
    except Exception as err:  # any failure of a user's forward is a broken contract, named here
        raise ConfigError(f"net {_name(net)} failed its first call net(xt, t) on xt {tuple(x.shape)}, t "
                          f"{t.tolist()} ({type(err).__name__}: {err})") from None
    finally:
        net.train(was_training)
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"net {_name(net)} breaks the network contract ({CONTRACTS}): net(xt [N, *D], t [N]) must "
                          f"return [N, n_outputs, *D] = {list(expected)} here; got {got}")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(f"net {_name(net)}: its first call gave NaN or infinite outputs on the training data")
