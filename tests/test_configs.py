"""Every option of every config group composes; the light ones also instantiate."""

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf, open_dict

from dpm.app.compose import config_dir

CONF = config_dir()

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "task"))  # train.py's
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
TASK_FILES = sorted(f.stem for f in (CONF / "task").glob("*.yaml"))  # evaluate.py's task group


def test_every_group_has_options():
    assert {"dataset", "net", "diffusion", "schedule", "trainer", "logger", "callbacks", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_light_nodes_instantiate(compose_cfg, group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg.T >= 2
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path)
    schedule = instantiate(cfg.schedule, T=cfg.T)
    # settings left to the data (null) are fitted by the kind as build() does, here to a few bits
    settings = OmegaConf.to_container(cfg.diffusion, resolve=True)
    with open_dict(cfg):
        cfg.diffusion.update(get_class(cfg.diffusion._target_).fitted(settings, torch.tensor([[0.0, 1.0], [1.0, 1.0]])))
    diffusion = instantiate(cfg.diffusion, schedule=schedule)
    assert diffusion.T == cfg.T
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    if cfg.get("lr_scheduler"):  # total_steps null: the run's length, filled in by the module (as T by build)
        run_length = {"total_steps": 100} if cfg.lr_scheduler.get("total_steps", 0) is None else {}
        instantiate(cfg.lr_scheduler)(optimizer, **run_length)
    for node in ("callbacks", "logger"):
        for child in (cfg.get(node) or {}).values():
            if child is not None and "Wandb" not in child._target_:
                instantiate(child)
    if cfg.trainer.get("accelerator") in (None, "auto", "cpu"):
        from dpm.app.trainer import trainer_settings

        instantiate(cfg.trainer, logger=False, **trainer_settings(cfg))


def test_dataset_config_picks_its_diffusion_and_command_line_wins(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.dataset._target_.endswith("SwissRollDataModule") and cfg.schedule.kind == "geometric" and cfg.T == 40
    cfg = compose_cfg(["schedule=linear", "T=100"])
    assert cfg.schedule.kind == "linear" and cfg.T == 100


def test_evaluate_config_requires_a_checkpoint(compose_cfg):
    from omegaconf import OmegaConf

    cfg = compose_cfg([], config_name="evaluate")
    assert OmegaConf.is_missing(cfg, "ckpt_path")
    assert cfg.estimator == "exact" and cfg.task == "bound"


def test_each_task_of_the_registry_has_its_config_file():
    from dpm.app.evaluate import OWN
    from dpm.tasks import TASKS

    assert TASK_FILES == sorted([*TASKS, OWN])  # one file per task of the registry, and task=own (a user's module)


@pytest.mark.parametrize("task", TASK_FILES)
def test_task_file_sets_its_task_and_its_node(compose_cfg, task):
    cfg = compose_cfg(["ckpt_path=x", f"task={task}"], config_name="evaluate")
    assert cfg.task == task
    others = [t for t in TASK_FILES if t != task and t in cfg]
    assert not others, others  # another task's node is not in this task's config
    assert ("estimator" in cfg) == (task == "bound")


def test_help_lists_each_commands_own_groups():
    """train.py --help lists train.py's groups (not evaluate.py's task); evaluate.py --help only its task group."""
    import subprocess
    import sys

    root = CONF.parent
    for script, groups in (("train.py", GROUPS), ("evaluate.py", ["task"])):
        out = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        listed = out.stdout.split("(group=option)", 1)[1].split("== Config ==", 1)[0].split()
        listed = [word.rstrip(":") for word in listed if word.endswith(":")]
        assert listed == groups, (script, listed)
        assert all(f"{g}: {', '.join(sorted(f.stem for f in (CONF / g).glob('*.yaml')))}" in out.stdout for g in groups)
