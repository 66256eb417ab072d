"""One set of rules for counts and ranges (dpm.ranges), wherever a setting is checked: True and 2.5 are no counts,
in a data set's constructor, an evaluate task's settings and the app's checks alike."""

from __future__ import annotations

import numpy as np
import pytest

from dpm.app.build import build
from dpm.app.compose import compose
from dpm.errors import ConfigError
from dpm.ranges import count, integer_problem, real, real_problem


def test_the_rules():
    for bad in (True, False, 2.5, 3.0, "3", None, [1]):
        assert integer_problem(bad, 1) == "must be an integer >= 1", bad
    assert integer_problem(0, 1) == "must be an integer >= 1" and integer_problem(5, 1, 4) == "must be an integer <= 4 and >= 1"
    assert integer_problem(np.int64(3), 1) is None and integer_problem(3, 1, 3) is None
    for bad in (True, float("nan"), float("inf"), "1.0", None):
        assert real_problem(bad) == "must be a finite number", bad
    assert real_problem(0.0, 0, 1, low_open=True) == "must be a finite number > 0 and <= 1"
    assert real_problem(1, 0, 1, high_open=True) == "must be a finite number >= 0 and < 1" and real_problem(0.5, 0, 1) is None
    assert count("k", None, 1, allow=(None,)) is None and real("x", 2, 0) == 2.0
    with pytest.raises(ConfigError, match=r"^k=True is invalid: it must be an integer >= 1 \(or null\)$"):
        count("k", True, 1, allow=(None,))


# every place that checks a count, with a boolean and a fraction: the same refusal
PLACES = [
    ("dataset.n_val", ["dataset=digits"]),  # a bundled image set's split size (data/images.py)
    ("dataset.n_test", ["dataset=heartbeat"]),  # a generated set's split size (data/base.py)
    ("dataset.batch_size", []),
    ("dataset.period", ["dataset=heartbeat"]),
    ("dataset.image_size", ["dataset=dead_leaves"]),
    ("dataset.patch_size", ["dataset=bark"]),
    ("net.n_hidden_conv", ["dataset=digits"]),
]


@pytest.mark.parametrize("key,overrides", PLACES, ids=[p[0] for p in PLACES])
@pytest.mark.parametrize("value", ["true", "2.5"])
def test_a_count_is_an_integer_wherever_it_is_checked(key, overrides, value):
    with pytest.raises(ConfigError, match=rf"{key}={'True' if value == 'true' else value} is invalid: it must be an "
                                          r"integer >= \d"):
        build(compose([*overrides, f"{key}={value}"]))


def test_a_users_files_counts_follow_the_same_rules(tmp_path):
    from dpm.data.array import ArrayDataModule
    from dpm.data.folder import FolderDataModule

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(50, 2)))
    for kwargs, key in (({"n_val": True}, "dataset.n_val"), ({"n_val": 2.5}, "dataset.n_val"),
                        ({"n_levels": True}, "dataset.n_levels")):
        with pytest.raises(ConfigError, match=rf"{key}=(True|2.5) is invalid: it must be an integer"):
            ArrayDataModule(path=str(tmp_path / "v.npy"), **kwargs).setup()
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match=r"dataset.image_size=2.5 is invalid: it must be an integer >= 1"):
        FolderDataModule(path=str(tmp_path / "images"), image_size=2.5)


@pytest.mark.parametrize("task,setting", [("bound", "n_t=2.5"), ("bound", "limit=true"), ("complete", "complete.n=true"),
                                          ("complete", "complete.k=2.5"), ("inpaint", "inpaint.n=2.5")])
def test_an_evaluate_tasks_counts_follow_the_same_rules(task, setting):
    from dpm.tasks import TASKS
    from dpm.data.digits import DigitsDataModule
    from dpm.data.heartbeat import HeartbeatDataModule
    from dpm.core.binomial import BinomialDiffusion
    from dpm.core.gaussian import GaussianDiffusion
    from dpm.core.schedules import Schedule

    dm = HeartbeatDataModule(n_train=50, n_val=20, n_test=30) if task != "inpaint" else DigitsDataModule()
    diffusion = BinomialDiffusion(Schedule("binomial", T=10), p=0.2) if task != "inpaint" else \
        GaussianDiffusion(Schedule("sd2015", T=10))
    cfg = compose(["ckpt_path=unused", f"task={task}", setting], config_name="evaluate")
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=rf"{key}={'True' if value == 'true' else value} is invalid: it must be an "
                                          r"integer"):
        TASKS[task].check(cfg, dm, diffusion)
