"""The Swiss-roll data module: pinned generation, splits, normalisation, state round trip."""

import pytest
import torch
from sklearn.datasets import make_swiss_roll

from dpm.data.swiss_roll import SwissRollDataModule


def test_splits_are_pinned_and_normalised_on_train():
    dm = SwissRollDataModule(n_train=3000, n_val=100, n_test=500, seed=7)
    dm.setup()
    train, test = dm.splits["train"], dm.splits["test"]
    assert train.shape == (3000, 2) and test.shape == (500, 2) and dm.data_shape == (2,)
    assert torch.allclose(train.mean(0), torch.zeros(2), atol=1e-5)
    assert train.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)  # unit variance per dim on average
    raw, _ = make_swiss_roll(500, noise=0.0, random_state=7 + 2)  # the test split's own seed
    expected = (torch.from_numpy(raw[:, [0, 2]]).float() - dm.shift) / dm.scale
    assert torch.allclose(test, expected, atol=1e-5)
    # the test split does not depend on the size of the training split
    other = SwissRollDataModule(n_train=1000, n_val=100, n_test=500, seed=7)
    other.setup()
    assert torch.allclose(other.splits["test"] * other.scale + other.shift, test * dm.scale + dm.shift, atol=1e-4)


def test_state_dict_restores_the_normalisation():
    dm = SwissRollDataModule(n_train=500, n_val=50, n_test=50, seed=1)
    dm.setup()
    fresh = SwissRollDataModule(n_train=2000, n_val=50, n_test=50, seed=1)
    fresh.load_state_dict(dm.state_dict())
    fresh.setup()
    assert torch.equal(fresh.shift, dm.shift) and fresh.scale == dm.scale
    assert torch.allclose(fresh.splits["test"], dm.splits["test"])


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="dataset.n_test=0"):
        SwissRollDataModule(n_test=0)
    with pytest.raises(ValueError, match="dataset.noise"):
        SwissRollDataModule(noise=-1)
