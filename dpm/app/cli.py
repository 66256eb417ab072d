"""What train.py and evaluate.py share around dpm.app.train: the run directory from Hydra, errors a user can act on
(one paragraph, no traceback unless HYDRA_FULL_ERROR=1), exit codes a scheduler can trust, and a last word
saying where the results are.

Exit codes: 0 success; 1 a run that failed (no optimizer step, non-finite stop, out of memory, an error in the
code: its traceback); 2 a setting, file or checkpoint that cannot be used (a dpm.errors.ConfigError, raised before
anything is written), Hydra's own composition errors included (an unknown group option or key, a malformed
override: run_app); 130 SIGINT; 143 SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dpm.app.compose import config_dir
from dpm.app.hydra_guard import install as guard_hydra
from dpm.app.lines import quiet_library_noise
from dpm.app.rundir import CLAIM_FILE, global_rank_from_env, note_start, release, uncreatable, update_link
from dpm.errors import ConfigError

EXIT_FAILED, EXIT_CONFIG, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
_entered = False  # set once Hydra has called the task function (main below)
# Every config Hydra composes in a process running dpm's commands is checked as it is loaded (dpm.app.hydra_guard):
# from here, so that a job process of a launcher (which unpickles the task function, importing this module) is
# guarded before it composes its own job's config.
guard_hydra(config_dir())


def run_app(app: Callable[[], object]) -> None:
    """Call a @hydra.main app (train.py's or evaluate.py's main). Hydra reports an error of its own (an unknown
    group option or key, a malformed override, a config it cannot compose) by printing its short message and
    exiting 1 before it calls the task function; that exit becomes 2, a configuration error. Hydra's message is
    kept (HYDRA_FULL_ERROR=1 still shows its traceback); exits after the task function began are left as they are.
    A run or sweep directory given on the command line that cannot be created is refused first (Hydra would
    create it with a traceback)."""
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in RUN_DIR_KEYS or not value:
            continue
        problem = uncreatable(Path(value))
        if problem:
            _fail(EXIT_CONFIG, f"{key.lstrip('+')}={value} cannot be used: {problem}; choose a writable directory")
        note_start(value)  # what it holds now is never removed by a refusal (dpm.app.rundir.release)
    # Hydra prints its own errors (and a sweep job's) with its search path and a hint, unless HYDRA_FULL_ERROR is
    # set, when it raises them instead: so it is set, and the user's own wish kept for the tracebacks they ask for
    os.environ.setdefault(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == EXIT_FAILED and not _entered:
            sys.exit(EXIT_CONFIG)
        raise
    except Exception as err:
        if full_error_requested():
            raise
        if isinstance(err, ConfigError):  # a sweep's job refused for a setting (the job printed its line)
            _fail(EXIT_CONFIG, f"a job of the sweep was refused ({str(err).splitlines()[0][:300]}); the other jobs ran")
        if not _entered and isinstance(err, (HydraException, OmegaConfBaseException)):  # composing the config
            _fail(EXIT_CONFIG, hydra_error(err))
        raise  # a failure in the code: its traceback, exit 1


USER_FULL_ERROR = "DPM_USER_HYDRA_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, kept while run_app sets its own


def full_error_requested() -> bool:
    """The user asked for full tracebacks (HYDRA_FULL_ERROR=1 on their command line)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def hydra_error(err: BaseException) -> str:
    """One line for an error Hydra raised while composing the config: for an unknown option of a config group, the
    group's options; else Hydra's message (and its cause's) on one line, without the config search path."""
    if isinstance(err, MissingConfigException) and err.options and "/" in str(err.missing_cfg_file):
        group, option = str(err.missing_cfg_file).rsplit("/", 1)
        return f"{group}={option} is not an option of the config group {group}; valid choices: {sorted(err.options)}"
    text = str(err).split("\nConfig search path:")[0]
    if isinstance(err.__cause__, OmegaConfBaseException):
        text += "\n" + str(err.__cause__)
    return "; ".join(line.strip().rstrip(".") for line in text.splitlines() if line.strip())


RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def _hydra_record() -> tuple[Path, dict[str, str]]:
    hc = HydraConfig.get()
    record = {"hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
              "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task))}
    return Path(hc.runtime.output_dir), record


JOB_OVERRIDES_ENV = "DPM_JOB_OVERRIDES"
LIGHTNING_CHILD_ARGS = ("hydra.run.dir=", "hydra.job.name=", "hydra.output_subdir=")


def ddp_child_argv(argv: list[str], env: dict) -> list[str]:
    """The command line for a DDP process that Lightning re-launched from rank 0's: Lightning repeats rank 0's
    sys.argv, which for a multirun job still holds `-m` and the whole sweep, so each extra rank would start a
    sweep of its own. Rank 0 leaves its own job's overrides in the environment; the child runs that one job
    in rank 0's directory (the hydra.* arguments Lightning appended)."""
    job = env.get(JOB_OVERRIDES_ENV)
    if not job or env.get("LOCAL_RANK", "0") == "0":
        return argv
    return [argv[0], *json.loads(job), *(a for a in argv[1:] if a.startswith(LIGHTNING_CHILD_ARGS))]


def _fail(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class Terminated(BaseException):
    """SIGTERM during evaluate (which has no Lightning signal handling of its own); exit 143. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way (a user's task) takes it for an error."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def main(command: Callable[..., dict], cfg: DictConfig, name: str) -> dict | None:
    """Run dpm.app.train.train or dpm.app.evaluate.evaluate in Hydra's run directory and turn its outcome into an exit code."""
    from dpm.errors import Interrupted, RunFailed

    global _entered
    _entered = True
    quiet_library_noise()
    out_dir, record = _hydra_record()
    os.environ[JOB_OVERRIDES_ENV] = json.dumps(list(HydraConfig.get().overrides.task))  # for DDP children
    record["config.yaml"] = OmegaConf.to_yaml(cfg)
    # In a sweep, a job's error goes to Hydra (which records the job as failed and goes on with the sweep)
    full_error = full_error_requested() or str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    multirun = str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    if name == "evaluate":  # evaluate has no Lightning signal handling: SIGTERM stops it here (143)
        signal.signal(signal.SIGTERM, _raise_terminated)

    def nothing_kept() -> str:
        """Remove what the refused or interrupted command left without results; say so."""
        if global_rank_from_env() != 0 or not release(out_dir, keep_logs=multirun):
            return ""
        return f" ({out_dir} holds nothing of it)" if multirun else f" (nothing was left in {out_dir})"

    try:
        result = command(cfg, out_dir, hydra_record=record)
    except Interrupted as err:
        _fail(err.exit_code, str(err))
    except (KeyboardInterrupt, Terminated) as err:
        code, signame = (EXIT_SIGTERM, "SIGTERM") if isinstance(err, Terminated) else (EXIT_SIGINT, "SIGINT")
        _fail(code, f"{name} stopped by {signame} before it wrote its results{nothing_kept()}"
              if name == "evaluate" else f"{name} stopped by {signame}")
    except ConfigError as err:  # only a setting, file or checkpoint that cannot be used exits 2
        kept = nothing_kept()
        if multirun:
            print(f"error: {err}{kept}", file=sys.stderr, flush=True)  # the job's line; Hydra records its failure
        if full_error:
            raise
        _fail(EXIT_CONFIG, str(err) + kept)
    except RunFailed as err:
        if full_error:
            raise
        _fail(EXIT_FAILED, str(err))
    except OSError as err:  # a full disk, a folder made read-only mid-run: the original error, once
        if full_error:
            raise
        _fail(EXIT_FAILED, f"{type(err).__name__}: {err}")
    if global_rank_from_env() == 0:
        report(name, cfg, out_dir, result)
    return result


def report(name: str, cfg: DictConfig, out_dir: Path, result: dict) -> None:
    """The last lines: where the results are and what to run next."""
    lines = []
    if name == "train":
        note = update_link(cfg.get("latest_link"), out_dir)
        if note:
            lines.append(note)
        ckpt = result.get("checkpoint")
        lines += [f"run directory: {out_dir}", f"checkpoint:    {ckpt}"]
        if "eval" in result:
            lines.append(f"test bound:    {result['eval']} (K = {result['test/K']:.4f} ± {result['test/K_stderr']:.4f}, "
                         f"{result['test/estimator']} estimator)")
        trust = list(cfg.get("trust") or [])  # the command that reads this checkpoint must trust them again
        lines.append(f"next:          python evaluate.py ckpt_path={ckpt}"
                     + (f" trust=[{','.join(trust)}]" if trust else ""))
    else:
        written = sorted(str(p) for p in out_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts
                         and p.suffix != ".log" and p.name != CLAIM_FILE)
        lines += [f"output directory: {out_dir}"] + [f"wrote {p}" for p in written]
    print("\n".join(lines), flush=True)
