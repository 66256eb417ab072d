"""How batches come out of a split held as one tensor: index batches made as tensors (no per-example Python),
training batches in a (seed, epoch) order that resumes mid-epoch, evaluation batches sharded without padding."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset


class BatchTensorDataset(TensorDataset):
    """A TensorDataset that the DataLoader indexes once per batch (tensor[indices]) rather than once per example;
    the batch samplers below hand it index tensors, so a batch is one indexing operation."""

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t.index_select(0, index.to(t.device)) for t in self.tensors)  # .to: itself on the same device


def as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for BatchTensorDataset: its batches are already stacked."""
    return batch


class EpochBatches(Sampler[torch.Tensor]):
    """Training batches of `batch` indices [batch] from this rank's share of a random order that depends only on
    (seed, epoch). With `world` processes, rank r takes every world-th example of the order from r, all shares
    equally long (the last n mod world examples of an epoch's order wait for another epoch); a last partial batch
    is dropped unless it is the only one. The order is drawn on the CPU (the same on any device) and moved to
    `device` once per epoch, so a batch of data held on a GPU is indexed there with no copy per step.

    The sampler counts its epochs itself, one per pass, rather than taking Lightning's epoch number: a checkpoint
    written at the end of a fit that stopped mid-epoch (max_steps) already counts that epoch as done, so a resumed
    run would otherwise skip the rest of it. `resume(epoch, skip)` makes the next pass epoch `epoch` without its
    first `skip` examples (ResumableLoader)."""

    def __init__(self, n: int, batch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.device = torch.device(device)  # where the indices go (the data's device): one copy per epoch
        self.epoch, self.skip = 0, 0  # the next pass
        self.in_progress = 0  # the epoch of the pass under way

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip
        self.in_progress = epoch

    @property
    def share(self) -> int:
        """Examples per rank per epoch."""
        return self.n // self.world

    def __len__(self) -> int:
        return max(1, self.share // self.batch) if self.share else 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator: the pass (and its epoch number) starts at the first batch taken, not when Lightning makes an
        # iterator it may not use (on resuming at an epoch's end it makes one for the finished epoch).
        self.in_progress, skip = self.epoch, self.skip
        self.epoch, self.skip = self.epoch + 1, 0
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.in_progress)
        order = torch.randperm(self.n, generator=g)[: self.share * self.world]
        mine = order[self.rank:: self.world][: len(self) * self.batch]
        yield from mine[skip:].to(self.device).split(self.batch)


class ShardBatches(Sampler[torch.Tensor]):
    """Evaluation batches of examples rank, rank + world, ... of a split, in order: every example on exactly one
    rank, none repeated (a DistributedSampler pads with duplicates, which would count them twice in K)."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.rank, self.world = n, batch, rank, world

    def __len__(self) -> int:
        return -(-len(range(self.rank, self.n, self.world)) // self.batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.arange(self.rank, self.n, self.world).split(self.batch))


class ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch through Lightning's `state_dict` / `load_state_dict` protocol for
    data loaders: every checkpoint records the epoch under way and how many of its batches were trained on
    (`batches_done()`, read from the trainer's progress), and a resumed fit yields only the epoch's remaining
    batches, as Lightning's loop expects of a resumable loader (it counts those batches as already fetched).
    Without it a run resumed from a mid-epoch last.ckpt would train on the epoch's first batches again."""

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        batches: EpochBatches = self.batch_sampler
        return {"epoch": batches.in_progress, "batches_done": int(self.batches_done()), "batch_size": batches.batch,
                "world": batches.world}

    def load_state_dict(self, state: dict) -> None:
        batches: EpochBatches = self.batch_sampler
        # resumed on another number of devices: the epoch's examples seen are skipped by count (the order differs)
        skip = state["batches_done"] * state["batch_size"] * state["world"] // batches.world
        if skip // batches.batch >= len(batches):  # the epoch was complete: the next one starts afresh
            batches.resume(state["epoch"] + 1, 0)
        else:
            batches.resume(state["epoch"], skip)
