"""The loaders' sharding and mid-epoch resume (dpm.data.base), against the plain order they must reproduce."""

import torch

from dpm.data.base import BatchTensorDataset, EpochShuffle, ResumableLoader, Shard, as_batch


def _indices(loader) -> list[int]:
    return [i for _, index in loader for i in index.tolist()]


def _loader(n: int, batch: int, rank: int = 0, world: int = 1, done: int = 0) -> ResumableLoader:
    data = torch.arange(n).float()[:, None]
    return ResumableLoader(BatchTensorDataset(data, torch.arange(n)), batch_size=batch, collate_fn=as_batch,
                           sampler=EpochShuffle(n, seed=3, rank=rank, world=world), drop_last=True,
                           batches_done=lambda: done)


def test_shards_cover_every_example_once():
    for n, world in ((10, 3), (7, 2), (4, 4)):
        seen = sorted(i for rank in range(world) for i in Shard(n, rank, world))
        assert seen == list(range(n))
        epoch = [i for rank in range(world) for i in EpochShuffle(n, 5, rank, world)]
        assert len(epoch) == len(set(epoch)) == n // world * world


def test_each_pass_is_a_new_epoch_and_the_order_depends_on_seed_and_epoch_only():
    a, b = EpochShuffle(50, 1), EpochShuffle(50, 1)
    first, second = list(a), list(a)
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    assert list(b) == first and list(b) == second


def test_resume_mid_epoch_yields_the_rest_of_that_epoch_then_the_next():
    straight = _loader(64, 8)
    epochs = [_indices(straight), _indices(straight)]
    for done in (0, 3, 7, 8):  # 8 batches per epoch: 8 done is a complete epoch
        interrupted = _loader(64, 8, done=done)
        _indices(interrupted)
        resumed = _loader(64, 8)
        resumed.load_state_dict(interrupted.state_dict())
        if done < 8:
            assert _indices(resumed) == epochs[0][done * 8:]
        assert _indices(resumed) == epochs[1]


def test_resume_on_another_number_of_processes_skips_the_examples_seen():
    interrupted = _loader(64, 8, rank=0, world=2, done=2)  # 2 batches of 8 on each of 2 ranks: 32 seen
    state = interrupted.state_dict()
    resumed = _loader(64, 8)  # one process
    resumed.load_state_dict(state)
    assert len(_indices(resumed)) == 64 - 32
