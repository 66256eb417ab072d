"""Estimators of the lower bound K (Eq. 14) per example, and its summary with a standard error.

K_i = bound_const(x0_i) - sum_{t=2..T} KL_t(x0_i), in nats. The sum over t is either computed term by term
(`exact`, one draw of x_t per term) or estimated without bias from stratified draws of t (`mc`; with one
stratum this is the training estimator (T - 1) KL_t for t ~ U{2..T}, drawn per example).

Every random draw (t, the noise of x_t) comes from a torch.Generator (a stream: training), or from keys
(dpm.core.keyed.Keys(seed, example index): evaluation), with which each example's K is a function of the example,
its index and the seed only, whatever the batch it is evaluated in.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from dpm.core.diffusion import Diffusion, Net, check_source
from dpm.core.keyed import T_DRAW, Keys

ESTIMATORS = ("exact", "mc")
LN2 = math.log(2.0)


def strata_edges(T: int, n_t: int) -> list[int]:
    """Edges 0 = e_0 < ... < e_n = T - 1 of n_t contiguous strata over the offsets t - 2 in 0..T-2, spaced
    geometrically: the KL terms are largest at small t (a trained image model has a quarter of its bound in
    t = 2 alone), so narrow strata there keep the estimator's variance, and its tail, small."""
    edges = [0]
    for k in range(1, n_t):
        e = max(edges[-1] + 1, round(T ** (k / n_t)) - 1)
        edges.append(min(e, T - 1 - (n_t - k)))
    return edges + [T - 1]


def stratified_t(n: int, T: int, n_t: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", keys: Keys | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n_t times per example, one uniform draw from each of the n_t strata of {2..T} (strata_edges).

    Returns t [n_t, n] (long) and the strata sizes w [n_t] (float), so that sum_k w_k KL_{t_k} is an unbiased
    estimate of sum_{t=2..T} KL_t whatever the strata. The uniforms come from `generator` (on its device),
    from keys (example i's stream (T_DRAW,), on the keys' device), or else from torch's generator of `device`;
    t and w end on `device`.
    """
    if not 1 <= n_t <= T - 1:
        raise ValueError(f"n_t={n_t} is invalid: between 1 and T - 1 = {T - 1} draws of t per example")
    check_source(generator, keys, n)
    if keys is not None:
        u = keys.uniform((T_DRAW,), (n_t,)).T
    else:
        u = torch.rand(n_t, n, generator=generator, device=generator.device if generator is not None else device)
    lo, size = _strata(T, n_t, u.device)
    return t_of_uniform(u, T, n_t).to(device), size[:, 0].float().to(device)


def t_of_uniform(u: torch.Tensor, T: int, n_t: int = 1) -> torch.Tensor:
    """t [n_t, ...] (long) in stratum k of {2..T} (strata_edges) from uniforms u [n_t, ...] in [0, 1]: the k-th
    row uniform over its stratum. With one stratum (u of any shape), t ~ U{2..T} from Python numbers alone: no
    tensor is made and nothing waits for a device."""
    if n_t == 1:
        return 2 + (u * (T - 1)).long().clamp(max=T - 2)
    lo, size = _strata(T, n_t, u.device)
    return 2 + lo + (u * size).long().clamp(max=size - 1)


@functools.lru_cache(maxsize=32)
def _strata(T: int, n_t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The strata's first offsets and sizes, [n_t, 1] each, made once per device: a tensor built from a list is
    a host-to-device copy, and on a GPU that would wait for the queued work at every training step."""
    edges = strata_edges(T, n_t)
    with torch.inference_mode(False):
        lo = torch.tensor(edges[:-1], device=device)[:, None]
        return lo, torch.tensor(edges[1:], device=device)[:, None] - lo


def kl_sum(diffusion: Diffusion, net: Net, x0: torch.Tensor, estimator: str = "exact", n_t: int = 1,
           generator: torch.Generator | None = None, on_terms: Callable[[int], None] | None = None,
           keys: Keys | None = None) -> torch.Tensor:
    """sum_{t=2..T} KL_t per example [N] (nats): term by term (`exact`) or by stratified Monte Carlo (`mc`).

    on_terms(k) is told each time k more example-terms are done (N per t for `exact`, N per stratum for `mc`).
    keys (one per example) make every draw keyed instead of drawn from `generator`. Either estimator puts one
    term of every example through the network per call: memory is bounded by the batch x0 [N, *D], whatever T
    and n_t are.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; valid choices: {list(ESTIMATORS)}")
    n, T = x0.shape[0], diffusion.T
    check_source(generator, keys, n)
    if estimator == "exact":
        total = x0.new_zeros(n, dtype=torch.float32)
        for step in range(2, T + 1):
            t = torch.full((n,), step, device=x0.device, dtype=torch.long)
            total = total + diffusion.kl_term(net, x0, t, generator, keys)
            if on_terms is not None:
                on_terms(n)
        return total
    t, w = stratified_t(n, T, n_t, generator, x0.device, keys)
    # One stratum per network call, so that memory is that of one batch of N whatever n_t is. Keyed draws
    # depend on (seed, index, NOISE, t) only, so each term is the one a single call over the batch repeated n_t
    # times would give; a generator's stream is read stratum by stratum.
    total = x0.new_zeros(n, dtype=torch.float32)
    for k in range(n_t):
        total = total + w[k] * diffusion.kl_term(net, x0, t[k], generator, keys)
        if on_terms is not None:
            on_terms(n)
    return total


def K_per_example(diffusion: Diffusion, net: Net, x0: torch.Tensor, estimator: str = "exact", n_t: int = 1,
                  generator: torch.Generator | None = None,
                  on_terms: Callable[[int], None] | None = None, keys: Keys | None = None) -> torch.Tensor:
    """K_i (Eq. 14 with its constant terms exact, see Diffusion.bound_const) per example, [N] nats.

    With keys=Keys(seed, index) (index [N]: each example's index in its data set) K_i depends only on the
    example, its index and the seed: the same for any batch size, batch order or number of processes."""
    with diffusion.one_pass():
        return diffusion.bound_const(x0) - kl_sum(diffusion, net, x0, estimator, n_t, generator, on_terms, keys)
