"""Small networks for tests: a fixed-output net, a random MLP whose readout is not zero, and the exact per-bit reverse
kernel of the heartbeat."""

from pathlib import Path

import torch
from torch import nn

from dpm.nets.mlp import MLP


class ConstantNet(nn.Module):
    """Outputs a constant (0 by default) for every example: [N, n_outputs, *D]."""

    def __init__(self, n_outputs: int, value: float = 0.0) -> None:
        super().__init__()
        self.n_outputs, self.value = n_outputs, value

    def forward(self, xt, t):
        return torch.full((xt.shape[0], self.n_outputs, *xt.shape[1:]), self.value, dtype=xt.dtype, device=xt.device)


def random_mlp(D: int, n_outputs: int, T: int, seed: int = 0, scale: float = 0.3) -> MLP:
    """An MLP with a random (non-zero) readout, so its KL terms vary with x_t and t."""
    torch.manual_seed(seed)
    net = MLP((D,), n_outputs, T, hidden=32, n_layers=2)
    with torch.no_grad():
        net.readout.weight.normal_(0, scale)
        net.readout.bias.normal_(0, scale)
    return net.eval()


class ExactHeartbeatKernel(nn.Module):
    """The network output that makes the binomial reverse kernel the exact per-bit marginal of the true reversal of
    heartbeat data: p(x_{t-1,i} = 1 | x_t) = sum_k P(k | x_t) q(x_{t-1,i} = 1 | x_t, x0 = pattern k), with
    P(k | x_t) ∝ q(x_t | pattern k). [N, 1, length]."""

    def __init__(self, diffusion, patterns):
        super().__init__()
        self.d, self.patterns = diffusion, patterns

    def forward(self, xt, t):
        n_k, length = self.patterns.shape
        x0 = self.patterns[None].expand(len(xt), -1, -1).reshape(-1, length)
        m = self.d.marginal(x0, t.repeat_interleave(n_k))[0].reshape(-1, n_k, length)
        weights = torch.softmax((torch.xlogy(xt[:, None], m) + torch.xlogy(1 - xt[:, None], 1 - m)).sum(2), 1)
        post = self.d.q_posterior(x0, xt.repeat_interleave(n_k, 0), t.repeat_interleave(n_k))[0]
        prob = (weights[..., None] * post.reshape(-1, n_k, length)).sum(1).clamp(1e-6, 1 - 1e-6)
        fwd = self.d.forward_kernel(xt, t)[0].clamp(1e-6, 1 - 1e-6)
        return (torch.logit(prob) - torch.logit(fwd))[:, None]


def diffusion_and_data(kind: str, T: int = 30, n: int = 64):
    """(diffusion, a random MLP for it, x0 [n, D]) of a small case of either kind, seeded: Gaussian on 3-D normal
    draws, binomial (p = 0.3) on 6 bits of rate 0.4."""
    from dpm.core.binomial import BinomialDiffusion
    from dpm.core.gaussian import GaussianDiffusion
    from dpm.core.schedules import Schedule

    torch.manual_seed(0)
    if kind == "gaussian":
        d, D = GaussianDiffusion(Schedule("sd2015", T=T)), 3
        x0 = torch.randn(n, D)
    else:
        d, D = BinomialDiffusion(Schedule("binomial", T=T), p=0.3), 6
        x0 = torch.bernoulli(torch.full((n, D), 0.4))
    return d, random_mlp(D, d.n_outputs, d.T), x0


def hydra_config(*overrides):
    """train.yaml composed with its hydra node (launcher, sweep dir, callbacks), as Hydra's launchers see it."""
    from dpm.app.compose import compose

    return compose(list(overrides), return_hydra_config=True)


def hydra_job_config(output_dir, sweep_dir, job_num: int = 0, overrides=(), multirun: bool = True):
    """The config a Hydra job sees inside run_job (hydra node included, runtime.output_dir set), for the Hydra
    callbacks (dpm.sweeps.jobs.SweepJobs) without launching a process."""
    from omegaconf import open_dict

    cfg = hydra_config(f"hydra.sweep.dir={sweep_dir}", *overrides)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN" if multirun else "RUN"
        cfg.hydra.job.num = job_num
        cfg.hydra.runtime.output_dir = str(output_dir)
    return cfg


def save_untrained(path: Path, overrides: list[str]) -> str:
    """A checkpoint of the model a config describes, as train.py's holds it (its run config and weights), before
    any training: the evaluate tasks check their settings against its data and diffusion."""
    from dpm.app.build import build
    from dpm.app.compose import compose

    dm, module = build(compose(overrides))
    torch.save({"dpm_config": module.run_config, "state_dict": module.state_dict()}, path)
    return str(path)
