"""The loaders' sharding and mid-epoch resume (dpm.data.loaders), against the plain order they must reproduce."""

import torch

from dpm.data.loaders import BatchTensorDataset, EpochBatches, ResumableLoader, ShardBatches, as_batch


def _indices(loader) -> list[int]:
    return [i for _, index in loader for i in index.tolist()]


def _loader(n: int, batch: int, rank: int = 0, world: int = 1, done: int = 0) -> ResumableLoader:
    data = torch.arange(n).float()[:, None]
    return ResumableLoader(BatchTensorDataset(data, torch.arange(n)), collate_fn=as_batch,
                           batch_sampler=EpochBatches(n, batch, seed=3, rank=rank, world=world),
                           batches_done=lambda: done)


def test_shards_cover_every_example_once_in_batches():
    for n, batch, world in ((10, 3, 3), (7, 2, 2), (4, 8, 4), (101, 8, 2)):
        shards = [list(ShardBatches(n, batch, rank, world)) for rank in range(world)]
        assert sorted(int(i) for shard in shards for b in shard for i in b) == list(range(n))
        for rank, shard in enumerate(shards):
            assert len(shard) == len(ShardBatches(n, batch, rank, world)) and all(len(b) <= batch for b in shard)
        epoch = [int(i) for rank in range(world) for b in EpochBatches(n, batch, 5, rank, world) for i in b]
        assert len(epoch) == len(set(epoch))  # no example twice within an epoch


def test_epoch_batches_are_full_and_one_partial_batch_is_kept_only_when_alone():
    assert [len(b) for b in EpochBatches(70, 16)] == [16] * 4 and len(EpochBatches(70, 16)) == 4
    assert [len(b) for b in EpochBatches(10, 16)] == [10] and len(EpochBatches(10, 16)) == 1


def test_each_pass_is_a_new_epoch_and_the_order_depends_on_seed_and_epoch_only():
    a, b = EpochBatches(50, 50, 1), EpochBatches(50, 50, 1)
    first, second = next(iter(a)).tolist(), next(iter(a)).tolist()
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    assert next(iter(b)).tolist() == first and next(iter(b)).tolist() == second


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
    _indices(interrupted)
    resumed = _loader(64, 8)  # one process
    resumed.load_state_dict(interrupted.state_dict())
    assert len(_indices(resumed)) == 64 - 32


def test_an_iterator_never_used_starts_no_epoch():
    """Lightning makes an iterator for a finished epoch when it resumes at that epoch's end, and never uses it."""
    first = next(iter(EpochBatches(50, 50, 1))).tolist()
    batches = EpochBatches(50, 50, 1)
    iter(batches)
    assert next(iter(batches)).tolist() == first
