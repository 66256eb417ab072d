"""The errors every layer may raise and the app shell turns into exit codes (docs/contracts.md: exit codes)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting, file or checkpoint that cannot be used (exit 2); the message names the key, the value and what
    is valid."""


class RunFailed(RuntimeError):
    """A run that cannot be called a success (no optimizer step, too many non-finite steps); exit 1."""


class Interrupted(Exception):
    """Training stopped by SIGINT (exit 130), SIGTERM (exit 143) or, in a SLURM job, SIGUSR1 / SIGUSR2 (138 / 140:
    requeued) after writing last.ckpt."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
