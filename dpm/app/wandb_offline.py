"""W&B without credentials: a run asked to log to W&B (logger=wandb, logger=many) on a machine with no W&B login
logs offline instead, with a one-line note, rather than failing inside Lightning after its run directory was made.

Why offline rather than a refusal: the metrics of a training run (often hours) are kept either way, on disk in
<run>/wandb/, and `wandb sync` uploads them once the machine is logged in; a refusal would stop work that needs no
server. Credentials are what W&B itself would find (WANDB_API_KEY, its settings file, ~/.netrc), looked up with
W&B's own check that never prompts and never contacts the server."""

from __future__ import annotations

import os

from omegaconf import DictConfig, open_dict

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
OFFLINE_MODES = ("offline", "disabled", "dryrun")  # WANDB_MODE values under which nothing is sent


def credentials_found() -> bool:
    """Whether W&B has an API key (or identity token) here, without prompting and without the network."""
    import wandb

    try:
        found = bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # a W&B release before login(prompt=...): its older lookup of the same sources
        found = bool(wandb.api.api_key)
    # The lookup made W&B's process-wide settings, which read the environment once; dropped, so that the logger's
    # own run (offline: WANDB_MODE set by Lightning) starts from the environment as it is then.
    wandb.teardown()
    return found


def online_without_credentials() -> bool:
    """W&B would try to go online here (WANDB_MODE does not say offline) but has no credentials to do so."""
    return os.environ.get("WANDB_MODE", "").lower() not in OFFLINE_MODES and not credentials_found()


def offline_without_credentials(cfg: DictConfig) -> str | None:
    """Set every online W&B logger of cfg (cfg.logger.<name>) to offline when W&B has no credentials here; returns
    the note to print, or None when nothing changed (no W&B logger, already offline, or logged in)."""
    nodes = [name for name, node in (cfg.get("logger") or {}).items()
             if isinstance(node, DictConfig) and node.get("_target_") == WANDB_LOGGER and not node.get("offline")]
    if not nodes or not online_without_credentials():
        return None
    with open_dict(cfg):
        for name in nodes:
            cfg.logger[name].offline = True
    return ("note: W&B has no credentials here (no `wandb login`, WANDB_API_KEY or ~/.netrc entry), so this run "
            "logs to W&B offline, into <run directory>/wandb/; upload it later with `wandb sync <run directory>/wandb/"
            "offline-run-*` (or set logger.wandb.offline=true to say so yourself)")
