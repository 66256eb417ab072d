"""Sequential Monte Carlo for a delta r on known coordinates (inpainting, completion): SMCDiff, Trippe et al.
(2022), "Diffusion probabilistic modeling of protein backbones in 3D for the motif-scaffolding problem".
Not in the 2015 paper, whose method is the clamp of Eq. 23 (dpm.core.posterior.clamp).

Why: the clamp draws x_{t-1} ~ p(x_{t-1} | x_t) with the known coordinates set to the given values at every t,
but never asks how well a state x_t explains them, so the unknown coordinates can settle on something the known
ones rule out (the heartbeat: about 69 % of completions consistent with the first 5 bins even with the exact
reverse kernel, tests/test_posterior.py). SMCDiff conditions the model's reverse chain properly:
  1. one forward path of the known coordinates per example, y_0 = the given values and
     y_t ~ q(x_t | x_{t-1} = y_{t-1}) for t = 1..T (forward_path);
  2. P particles x_T with the unknown coordinates from pi and the known ones y_T;
  3. for t = T..1: the kernel p(x_{t-1} | x_t) (the network's for t >= 2, the fixed forward kernel at t = 1);
     each particle's weight times p(y_{t-1} | x_t), the kernel's mass at the known coordinates' next values
     (exact: the kernel factorises over coordinates); resampling within an example when the effective sample
     size falls below resample_below x P; the unknown coordinates of x_{t-1} drawn from the kernel, the known
     ones set to y_{t-1} (y_0: the given values, exactly);
  4. one particle per example drawn by its final weight.
With the known coordinates of x_{0:T} fixed at y_{0:T}, the model's chain is a hidden Markov chain in the unknown
ones and this is its bootstrap particle filter: as P grows the draw tends to p(x^u_0 | y_{0:T}) under the model.
Were the model the exact reversal of q, y_{1:T} (forward noise, independent across coordinates) would say nothing
more about x^u_0 than y_0 does, and that is p(x^u_0 | x^k_0 = y_0), the posterior the clamp aims at.

Shapes: data [N, *D]; particles [N, P, *D], flattened to [N * P, *D] (example-major) for the network; weights
float64 [N, P]. Every random draw comes from the one generator passed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dpm.core.diffusion import Diffusion, Net

RESAMPLE_BELOW = 0.5  # resample when ESS < P / 2: the usual adaptive rule (e.g. Doucet & Johansen 2009's tutorial)


@dataclass
class SMCResult:
    """What smc_sample returns. x0, x_T [N, *D]: per example the particle drawn by its final weight and the start
    of its ancestral line; particles [N, P, *D] with their normalised log-weights log_w float64 [N, P]; ess float64
    [T] the mean over examples of the effective sample size at each step t = T..1 (after weighting, before
    resampling); resampled long [T] how many examples resampled their particles at that step."""

    x0: torch.Tensor
    x_T: torch.Tensor
    particles: torch.Tensor
    log_w: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor

    def summary(self) -> dict:
        """The numbers a task reports: particles, resamplings (all examples and steps), mean and final ESS."""
        return {"particles": self.log_w.shape[1], "resamplings": int(self.resampled.sum()),
                "resamplings_per_example": self.resampled.sum().item() / self.log_w.shape[0],
                "mean_ess": self.ess.mean().item(), "final_ess": self.ess[-1].item()}


def forward_path(diffusion: Diffusion, y0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """y_0 = y0 and y_t ~ q(x_t | x_{t-1} = y_{t-1}) for t = 1..T, one Markov chain per entry of y0 [K] (the
    known coordinates of every example, flattened): [T + 1, K], row t holding y_t."""
    path = [y0]
    for step in range(1, diffusion.T + 1):
        t = torch.full(y0.shape, step, device=y0.device, dtype=torch.long)
        path.append(diffusion.draw(diffusion.forward_kernel(path[-1], t), generator))
    return torch.stack(path)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 per row of log-weights [N, P]: [N], between 1 and P."""
    return torch.exp(2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1))


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Systematic resampling (Kitagawa 1996) in each row of log-weights [N, P]: the ancestors [N, P] long of P new
    particles at the points (u + j) / P, j = 0..P-1, u ~ U(0, 1) per row, of the weights' cumulative sum.
    Particle j is picked floor(P w_j) or ceil(P w_j) times, and never when w_j = 0."""
    N, P = log_w.shape
    cdf = torch.softmax(log_w, 1).cumsum(1)
    cdf[:, -1] = 1.0  # rounding must not leave a point above the last particle
    u = torch.rand(N, 1, generator=generator, device=log_w.device, dtype=torch.float64)
    points = (u + torch.arange(P, device=log_w.device, dtype=torch.float64)) / P
    return torch.searchsorted(cdf, points, right=True).clamp_max(P - 1)


def _pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [N, P, ...] reordered within each example: row (i, j) of the result is x[i, index[i, j]]."""
    return x[torch.arange(len(x), device=x.device)[:, None], index]


@torch.no_grad()
def smc_sample(diffusion: Diffusion, net: Net, known: torch.Tensor, x_known: torch.Tensor, particles: int,
               generator: torch.Generator | None = None, resample_below: float = RESAMPLE_BELOW,
               path: torch.Tensor | None = None, chunk: int | None = None,
               on_step: Callable[..., None] | None = None) -> SMCResult:
    """SMCDiff (module docstring) for the model p(x_{t-1} | x_t) = diffusion.reverse_kernel(net, ...).

    known bool [N, *D] (or broadcastable): the coordinates r fixes; x_known [N, *D]: their values (the rest is
    ignored). particles: P >= 1 per example (P = 1 never resamples: the chain with the known coordinates on one
    forward path). resample_below: resample an example when its ESS < resample_below x P (0: never).
    path [T + 1, K]: the known coordinates' forward path (K = known.sum(), in the order of x_known[known]); None:
    drawn here by forward_path. chunk: rows per network call (None: all N P at once). on_step(1, ESS=the step's mean
    ESS, resampled=resamplings so far) after each of the T steps (a dpm.io.progress.Progress's update)."""
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles={particles!r} is invalid: must be a positive integer")
    N, D, P, T = x_known.shape[0], tuple(x_known.shape[1:]), particles, diffusion.T
    known = known.expand_as(x_known)
    if path is None:
        path = forward_path(diffusion, x_known[known], generator)
    if path.shape != (T + 1, int(known.sum())):
        raise ValueError(f"path has shape {tuple(path.shape)}; expected (T + 1, known coordinates) = "
                         f"{(T + 1, int(known.sum()))}")

    def y(t: int) -> torch.Tensor:  # y_t on the known coordinates, 0 elsewhere: [N, 1, *D]
        return torch.zeros_like(x_known).masked_scatter(known, path[t].to(x_known.dtype))[:, None]

    k = known[:, None]  # [N, 1, *D], broadcast over the particles
    x = torch.where(k, y(T), diffusion.prior_sample((N, P, *D), generator, x_known.device).to(x_known.dtype))
    x_T = x
    log_w = torch.full((N, P), -math.log(P), dtype=torch.float64, device=x.device)
    ess, resampled, n_resampled = [], [], 0  # per step t = T..1: mean ESS, examples resampled
    for step in range(T, 0, -1):
        p = diffusion.reverse_kernel(net, x.flatten(0, 1), step, chunk)  # each [N P, *D]
        y_next = y(step - 1)
        log_p_y = diffusion.log_prob(p, y_next.expand(N, P, *D).flatten(0, 1)).view(N, P, *D)
        log_w = log_w + torch.where(k, log_p_y, 0).flatten(2).sum(2).double()
        log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)  # normalised: no drift over T steps
        ess_t = effective_sample_size(log_w)
        need = ess_t < resample_below * P if step > 1 else torch.zeros_like(ess_t, dtype=torch.bool)
        ess.append(ess_t.mean().item())
        resampled.append(int(need.sum()))
        n_resampled += resampled[-1]
        if need.any():  # the weight depends on x_t only, so resample before drawing x_{t-1}
            index = torch.where(need[:, None], systematic_resample(log_w, generator),
                                torch.arange(P, device=x.device))
            x, x_T = _pick(x, index), _pick(x_T, index)
            p = tuple(_pick(p_i.reshape(N, P, *D), index).flatten(0, 1) for p_i in p)
            log_w = torch.where(need[:, None], -math.log(P), log_w)
        x = torch.where(k, y_next, diffusion.draw(p, generator).view(N, P, *D))
        if on_step is not None:
            on_step(1, ESS=f"{ess[-1]:.1f}/{P}", resampled=n_resampled)
    choice = torch.multinomial(log_w.exp(), 1, generator=generator)  # [N, 1]: one particle by its final weight
    return SMCResult(_pick(x, choice)[:, 0], _pick(x_T, choice)[:, 0], x, log_w,
                     torch.tensor(ess, dtype=torch.float64), torch.tensor(resampled))
