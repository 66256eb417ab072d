"""python -m dpm.bench --profile: the operators one training step runs, counted with torch.profiler.

On a GPU every operator is at least one kernel launch, microseconds whatever its size, so the number of operators
per step is what a step costs beyond its arithmetic. The count does not depend on the machine's load: it is
measured here, on the CPU, for (a) the project's DiffusionModule driven by the preset's Lightning Trainer and
(b) the plain loop of the same network and loss (dpm.bench.plain), and split by where each operator comes from:

  net_forward    inside the network's forward (a pre- and a post-hook on the network mark it)
  net_backward   the backward of those operators, and the accumulation of the parameters' gradients
  optimizer      inside the optimizer's step and zero_grad (torch's own profiler regions), after the closure
  loss_forward   the rest of the training step: dequantisation, draws of t and noise, x_t, the KL and the bound's
                 constant terms, the reduction to the loss (the module's training_step, the plain loop's loss)
  loss_backward  the backward of loss_forward's operators
  loop           everything else: fetching the batch, Lightning's loop and hooks, the non-finite check

An operator is a top-level ATen call (one the step makes, not one an operator makes inside itself) that does
work: a pure view or metadata call (view, expand, select, t, detach, empty, ...) launches nothing and is left
out, and a call such as `to` or `reshape` counts only when it copies. The counts are those of one step (the step
of median total among --profile-steps profiled steps after --warmup untimed ones). With --compile the network
is not marked (a mark would break the compiled graph), and its operators are counted in loss_forward and
loss_backward; operators inside a compiled graph's own kernels are not ATen calls and are not counted.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import lightning as L
import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from dpm.bench.regions import BACKWARD, CLOSURE, LOSS, NET, STEP, region

PARTS = ("net_forward", "net_backward", "optimizer", "loss_forward", "loss_backward", "loop")
_EVALUATE = "autograd::engine::evaluate_function: "
# calls that launch no work of their own: views, metadata, allocation (a caching allocator's, on a GPU)
NO_WORK = frozenset(f"aten::{n}" for n in (
    "view", "_unsafe_view", "_reshape_alias", "as_strided", "expand", "expand_as", "view_as", "t", "transpose",
    "permute", "select", "slice", "narrow", "unsqueeze", "squeeze", "flatten", "unflatten", "reshape", "split",
    "split_with_sizes", "chunk", "unbind", "alias", "detach", "detach_", "lift_fresh", "resolve_conj",
    "resolve_neg", "result_type", "empty", "empty_like", "empty_strided", "to", "contiguous", "type_as",
    "numpy_T", "_has_compatible_shallow_copy_type", "is_nonzero", "item", "_local_scalar_dense", "size", "stride",
    "set_", "requires_grad_", "retain_grad", "real", "conj"))
# ...except when something inside them does (a `to` that copies, a `reshape` of a strided tensor, `item` reading)
_WORK_INSIDE = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::flatten", "aten::type_as",
                          "aten::item", "aten::is_nonzero", "aten::_local_scalar_dense", "aten::expand_as"})


def _does_work(e) -> bool:
    if e.name not in NO_WORK:
        return True
    if e.name == "aten::_local_scalar_dense":  # reading a value to the host: a device sync on a GPU
        return True
    return e.name in _WORK_INSIDE and any(_does_work(c) for c in e.cpu_children)


def _ancestors(e) -> Iterator:
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def _part(e, net_seq: set[int]) -> str:
    """Which PART a top-level operator belongs to: its nearest labelled region decides."""
    for a in _ancestors(e):
        name = a.name
        if name.startswith(_EVALUATE):
            return "net_backward" if a.sequence_nr in net_seq or name.endswith("AccumulateGrad") else "loss_backward"
        if name == NET:
            return "net_forward"
        if name == LOSS:
            return "loss_forward"
        if name == BACKWARD:
            return "loss_backward"
        if name == CLOSURE:
            return "loop"
        if name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
            return "optimizer"
    return "loop"


def count_steps(events) -> list[dict]:
    """Per step (between consecutive STEP markers): operators per PART, their total, and how often each operator
    ran in each part ("part aten::name": count)."""
    events = list(events)
    net_seq = {d.sequence_nr for e in events if e.name == NET for d in _descendants(e) if d.sequence_nr >= 0}
    marks = sorted(e.time_range.start for e in events if e.name == STEP)
    steps = [Counter() for _ in marks[:-1]]
    names = [Counter() for _ in marks[:-1]]
    for e in events:
        if not e.name.startswith("aten::") or any(a.name.startswith("aten::") for a in _ancestors(e)):
            continue
        if not _does_work(e):
            continue
        start = e.time_range.start
        k = next((i for i in range(len(marks) - 1) if marks[i] <= start < marks[i + 1]), None)
        if k is not None:
            steps[k][_part(e, net_seq)] += 1
            names[k][f"{_part(e, net_seq)} {e.name}"] += 1
    out = []
    for parts, by_name in zip(steps, names):
        row = {p: parts.get(p, 0) for p in PARTS}
        row["total"] = sum(row.values())
        row["operators"] = dict(sorted(by_name.items()))
        out.append(row)
    return out


def _descendants(e) -> Iterator:
    for c in e.cpu_children:
        yield c
        yield from _descendants(c)


def typical(steps: list[dict]) -> dict:
    """The step of median total (the first such), so that its parts add up to its total."""
    if not steps:
        raise RuntimeError("no complete step was profiled (raise --profile-steps)")
    median = statistics.median_low([s["total"] for s in steps])
    chosen = next(s for s in steps if s["total"] == median)
    return {**chosen, "totals_of_profiled_steps": [s["total"] for s in steps]}


class _Region:
    """A record_function region opened and closed by two calls (for hooks: a pre-hook opens, a hook closes)."""

    def __init__(self, name: str) -> None:
        self.name, self.open = name, []

    def enter(self, *_) -> None:
        r = record_function(self.name)
        r.__enter__()
        self.open.append(r)

    def exit(self, *_) -> None:
        self.open.pop().__exit__(None, None, None)


@contextmanager
def net_region(net: torch.nn.Module) -> Iterator[None]:
    """Every forward of `net` inside a NET region (hooks: the network and its state_dict stay as they are)."""
    region = _Region(NET)
    handles = [net.register_forward_pre_hook(region.enter), net.register_forward_hook(region.exit)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def in_region(name: str, fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        with region(name):
            return fn(*args, **kwargs)
    return wrapped


def mark_step() -> None:
    with region(STEP):
        pass


class _ProfileSteps(L.Callback):
    """Profiles `n` module steps after `warmup`, then times `timed` more without the profiler."""

    def __init__(self, warmup: int, n: int, timed: int) -> None:
        self.warmup, self.n, self.timed = warmup, n, timed
        self.profiler: profile | None = None
        self.events = None
        self.t0, self.seconds = 0.0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.warmup:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.start()
        if self.warmup <= step <= self.warmup + self.n:
            mark_step()
        if step == self.warmup + self.n:
            self.profiler.stop()
            self.events = self.profiler.events()
            self.t0 = time.perf_counter()
        if step == self.warmup + self.n + self.timed:
            self.seconds = (time.perf_counter() - self.t0) / max(self.timed, 1)


def profile_module(module: L.LightningModule, trainer_factory: Callable[..., L.Trainer], dm, warmup: int,
                   n: int, timed: int, split_net: bool = True) -> dict:
    """Operator counts of the module's training step under the preset's Trainer (and seconds per step, timed
    over `timed` unprofiled steps). split_net=False leaves the network unmarked (a compiled loss: the marks
    would break its graph), its operators then counted in the loss's parts."""
    cb = _ProfileSteps(warmup, n, timed)
    trainer = trainer_factory([cb], max_steps=warmup + n + timed + 1, limit_val_batches=0)
    originals = {k: getattr(module, k) for k in ("training_step", "backward", "on_before_optimizer_step")}
    module.training_step = in_region(LOSS, originals["training_step"])
    module.backward = in_region(BACKWARD, originals["backward"])
    module.on_before_optimizer_step = in_region(CLOSURE, originals["on_before_optimizer_step"])
    precision = trainer.precision_plugin
    wrap = precision._wrap_closure  # Lightning runs training_step, backward and the hooks in this closure
    precision._wrap_closure = in_region(CLOSURE, wrap)
    try:
        with net_region(module.net) if split_net else nullcontext():
            trainer.fit(module, datamodule=dm)
    finally:
        for k in originals:
            module.__dict__.pop(k, None)
        precision.__dict__.pop("_wrap_closure", None)
    return {**typical(count_steps(cb.events)), "s_per_step": cb.seconds}


def profile_plain(plain, warmup: int, n: int, timed: int, split_net: bool = True) -> dict:
    """The same for the plain loop (dpm.bench.plain.Plain.train_step, its regions marked by the step itself)."""
    for _ in range(warmup):
        plain.train_step()
    with net_region(plain.net) if split_net else nullcontext(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            mark_step()
            plain.train_step(regions=True)
        mark_step()
    start = time.perf_counter()
    for _ in range(timed):
        plain.train_step()
    seconds = (time.perf_counter() - start) / max(timed, 1) if timed else None
    return {**typical(count_steps(prof.events())), "s_per_step": seconds}
