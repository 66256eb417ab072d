"""SLURM jobs that outlive a time limit or a preemption: the signal SLURM sends before it stops a job makes the
training stop between two steps and write last.ckpt, rank 0 requeues the job, and SLURM starts the same command
again, which finds its own run directory and resumes there from that checkpoint (dpm.app.train).

Which signal. SLURM sends what the job asked for with `--signal=SIG@SECONDS` that many seconds before its time
limit (and, on clusters that set PreemptParameters=send_user_signal, at a preemption):
- hydra/launcher=slurm (submitit) asks for SIGUSR2 (`--signal=USR2@<signal_delay_s>`). Submitit's own handler
  would call the launcher's checkpoint(), run `scontrol requeue` and exit from inside the handler, wherever the
  training is; its SIGTERM handler only logs.
- Lightning's SLURMEnvironment(auto_requeue=True) listens for SIGUSR1 (`#SBATCH --signal=SIGUSR1@90` in its docs):
  its handler saves an hpc_ckpt_<n>.ckpt from inside the handler, mid-step and with a barrier, then requeues.
dpm answers both, and SIGUSR1 / SIGUSR2 are only noted in the handler: the training stops at the next step
boundary, on every rank at the same step (Lightning broadcasts rank 0's stop flag before each step), last.ckpt
holds a state an uninterrupted run passes through, and the resumed run ends with the same weights. Lightning's
auto-requeue is turned off (dpm.app.trainer.trainer_settings) and submitit's handler is replaced while dpm runs.
SIGTERM (scancel, the time limit itself, a preemption after which SLURM requeues the job on its own) stops the run
with last.ckpt and exit 143, as outside SLURM; a job SLURM requeued resumes the same way.
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L

from dpm.app.slurm import slurm_job_id
from dpm.errors import Interrupted

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class RequeueOnSignal(L.Callback):
    """Inside a SLURM job: SIGUSR1 / SIGUSR2 stop the training at the next step as SIGTERM does (LastCheckpoint
    writes last.ckpt), and `interrupted` then requeues the job. The handlers are set when this object is made
    (before the model is built) and kept until `restore` (after the test at the end): a signal before training
    stops it at its first step, one after training is noted and the run finishes."""

    def __init__(self) -> None:
        self.job_id = slurm_job_id()
        self.signal: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous = {sig: signal.signal(sig, self._note) for sig in REQUEUE_SIGNALS}

    def _note(self, signum: int, frame: Any) -> None:
        self.signal = signum
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True  # stop at the next step, on every rank

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._trainer = trainer  # Lightning clears its stop flag when fit starts: a signal noted before sets it again
        if self.signal is not None:
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._trainer = None  # the training is over: the test at the end runs to completion

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def interrupted(self, trainer: L.Trainer, start_step: int, checkpoint: str) -> Interrupted:
        """After a stop by one of REQUEUE_SIGNALS: rank 0 requeues the job if this run made a step (a job signalled
        before its first step would only be started and signalled again); the exit code is 128 + the signal."""
        name, step = signal.Signals(self.signal).name, trainer.global_step
        stopped = f"stopped by {name} at step {step} (SLURM: the time limit or a preemption is near)"
        if not trainer.is_global_zero:
            return Interrupted(128 + self.signal, f"rank {trainer.global_rank} {stopped}; rank 0 requeues the job")
        if step <= start_step:
            return Interrupted(128 + self.signal, f"{stopped}, before this run's first step: not requeued, it would "
                               f"be signalled again before it trained (a time limit shorter than the signal's delay?). "
                               f"{checkpoint}")
        # SLURM answers the requeue by ending this job (SIGTERM, SIGKILL after KillWait): the checkpoint is written
        # and this process is on its way out, so SIGTERM no longer needs an answer
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        done = subprocess.run(["scontrol", "requeue", self.job_id], capture_output=True, text=True)
        if done.returncode != 0:
            return Interrupted(128 + self.signal, f"{stopped}; `scontrol requeue {self.job_id}` failed "
                               f"({(done.stderr or done.stdout).strip()}). {checkpoint}")
        return Interrupted(128 + self.signal, f"{stopped}; {checkpoint}; SLURM job {self.job_id} requeued: it "
                           "starts again and resumes from there, in this directory")


def keep_earlier_metrics(trainer: L.Trainer) -> None:
    """Lightning's CSVLogger deletes the metrics.csv it finds when it starts writing (it takes the folder for a new
    run's). A run that resumes in its own directory after a requeue keeps the rows of its earlier part: the file is
    read first, put back once the logger has started, and the logger continues it (its columns so far are the
    file's header, kept sorted as the logger keeps them). Rank 0 only, where the logger writes."""
    from lightning.pytorch.loggers import CSVLogger

    from dpm.io.files import write_text

    for logger in trainer.loggers:
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is None or not path.is_file():
            continue
        text = path.read_text()
        writer = logger.experiment  # starts Lightning's writer, which removes the file
        write_text(path, text)
        writer.metrics_keys = sorted(next(csv.reader(io.StringIO(text)), []))
