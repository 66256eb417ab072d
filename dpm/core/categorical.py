"""Categorical diffusion over C classes per position: the paper's binomial diffusion (Table App.1, docs/paper.md §1.3)
with C states instead of two (docs/paper.md §12).

Data are integer classes 0..C-1, held as float class indices [N, *D]. pi = Cat(m) independently per position, m a
distribution over the C classes (uniform, or the training data's class frequencies). One step keeps a position's
class with probability 1 - beta_t and otherwise redraws it from m:

    q(x_t | x_{t-1}) = Cat((1 - beta_t) onehot(x_{t-1}) + beta_t m),   the matrix Q_t = (1 - beta_t) I + beta_t 1 m^T

(rows x_{t-1}, columns x_t). Matrices a I + b 1 m^T with a + b = 1 are closed under products (m^T 1 = 1), so
Q_1 ... Q_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T and everything the bound needs is closed form:

    q(x_t = k | x0)                 = alpha_bar_t [k = x0] + (1 - alpha_bar_t) m_k                     (marginal)
    q(x_{t-1} = j | x_t = k, x0)    ∝ ((1 - beta_t) [j = k] + beta_t m_k)
                                      (alpha_bar_{t-1} [j = x0] + (1 - alpha_bar_{t-1}) m_j)           (q_posterior)

The reverse kernel perturbs the forward kernel's own form, read as a distribution over x_{t-1}, by the network's C
logits per position: p(x_{t-1} = j | x_t) = softmax_j(log((1 - beta_t) [j = x_t] + beta_t m_j) + z_j). With z = 0
it is the exact reversal for independent Cat(m) data (Q_t is reversible with respect to m); with C = 2 and
z = (0, z_1) it is the binomial kind's kernel with z = z_1, and so is every other quantity (tested).

A distribution over the classes travels as a C-tuple of log-probabilities, one [N, *D] tensor per class, so that
the generic code (the bound's constant terms, a delta r's clamp, SMC's resampling) handles it element by element.
"""

from __future__ import annotations

import math

import torch

from dpm.core.diffusion import Diffusion, Params, compute_dtype, keyed_uniform, sum_dims
from dpm.core.posterior import DeltaR
from dpm.core.schedules import Schedule

MIN_PRIOR = 1e-3  # a fitted class frequency is kept at least this (then renormalised): log m stays finite


def check_prior(prior: object, n_classes: int) -> list[float]:
    """m as a list of C probabilities from diffusion.prior: "uniform", or C positive numbers (normalised here)."""
    if prior == "uniform":
        return [1.0 / n_classes] * n_classes
    try:
        values = None if isinstance(prior, str) else list(prior)
    except TypeError:
        values = None
    if values is None or len(values) != n_classes or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"diffusion.prior={prior!r} is invalid: give 'uniform', null (the training data's class "
                         f"frequencies, fitted and recorded) or {n_classes} positive numbers, one per class")
    total = float(sum(values))
    return [float(v) / total for v in values]


def check_classes(x0: torch.Tensor, n_classes: int) -> None:
    """Raise ValueError unless every value of x0 is an integer class 0..n_classes-1."""
    bad = (x0 != x0.round()) | (x0 < 0) | (x0 > n_classes - 1)
    if bool(bad.any()):
        raise ValueError(f"categorical diffusion over {n_classes} classes needs integer classes 0..{n_classes - 1}; "
                         f"got values such as {x0[bad].flatten()[:3].tolist()} (diffusion.n_classes sets C)")


def class_frequencies(x0: torch.Tensor, n_classes: int) -> list[float]:
    """The frequency of each class 0..C-1 among the values of x0 [N, *D], each at least MIN_PRIOR, renormalised."""
    counts = torch.bincount(x0.long().flatten(), minlength=n_classes)[:n_classes].double()
    freq = (counts / counts.sum()).clamp_min(MIN_PRIOR)
    return (freq / freq.sum()).tolist()


def stack(p: Params) -> torch.Tensor:
    """The C-tuple of [N, *D] tensors as one [C, N, *D]."""
    return torch.stack(p)


def expected(log_q: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_j q_j values_j over the class axis 0 of log_q [C, N, *D] (q = exp(log_q)), with 0 where q_j = 0 (whatever
    values_j is there: 0 log 0 = 0). [N, *D]"""
    return torch.where(torch.isneginf(log_q), 0.0, torch.exp(log_q) * values).sum(0)


def draw_classes(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The class x = #{j >= 1 : u < S_j} with S_j = sum_{k >= j} probs_k (probs [C, N, *D], u [N, *D] uniform): then
    P(x >= j) = S_j, so x ~ Cat(probs). For C = 2 this is x = [u < probs_1], the binomial kind's draw."""
    survival = probs.flip(0).cumsum(0).flip(0)[1:]  # S_1 .. S_{C-1}
    return (u < survival).sum(0).to(u.dtype)


class CategoricalDiffusion(Diffusion):
    """Categorical diffusion towards Cat(m) over n_classes classes (module docstring).

    n_classes: C, null to take it from the data (the data set's integer classes); prior: m, "uniform", null for the
    training split's class frequencies (each kept at least MIN_PRIOR), fitted and recorded in the run's config as the
    binomial kind's p=null is, or C positive numbers. The network gives C logits per position (n_outputs = C)."""

    kind = "categorical"
    noise = "uniform"  # one uniform per position: the class by inverse CDF (draw_classes)
    factors = (DeltaR,)  # a delta on known positions (inpainting, completion, by the clamp or SMC)
    fixed_schedule = ("x_t is a draw of a class with no frozen-noise reparameterisation (paper 3.5): the noise "
                      "picks the class through a step function of beta, so the gradient of the bound that would "
                      "train beta misses how the draw moves (biased, as for the binomial kind). A score-function "
                      "estimator would be unbiased but is not implemented; keep schedule.learned=false.")

    def __init__(self, schedule: Schedule, n_classes: int | None = None, prior: object = "uniform") -> None:
        super().__init__(schedule)
        if n_classes is None:
            raise ValueError("diffusion.n_classes=null is taken from the data, which must then be integer classes "
                             "0..C-1 (dataset=array with integer values, or dataset.n_classes); give it, e.g. "
                             "diffusion.n_classes=4")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"diffusion.n_classes={n_classes!r} is invalid: an integer >= 2")
        if prior is None:
            raise ValueError("diffusion.prior=null is fitted to the training data when a run is built; here give "
                             "'uniform' or one probability per class")
        self.n_classes = self.n_outputs = n_classes
        self.prior = check_prior(prior, n_classes)

    @classmethod
    def fitted(cls, settings, x0, classes=None):
        """n_classes null: the data set's classes (else max + 1 of integer data); prior null: the training split's
        class frequencies. Data that are not integer classes are left to check_data to refuse."""
        out = {}
        n = settings.get("n_classes")
        if n is None:
            n = out["n_classes"] = classes if classes is not None else max(2, int(x0.max()) + 1)
        if isinstance(n, int) and n >= 2:
            check_classes(x0, n)  # before fitting anything to them
            if "prior" in settings and settings["prior"] is None:
                out["prior"] = class_frequencies(x0, n)
        return out

    @property
    def title(self):
        m = "uniform" if len(set(self.prior)) == 1 else "m = (" + ", ".join(f"{v:.3g}" for v in self.prior) + ")"
        return f"categorical diffusion over {self.n_classes} classes towards {m}"

    def check_data(self, x0):
        """Every value must be an integer class 0..C-1."""
        check_classes(x0, self.n_classes)

    # ---- tables ---------------------------------------------------------------------------------------
    def derive(self, beta):
        """float64 [T]: alpha_bar_t and alpha_bar_{t-1}, beta_t and 1 - beta_t."""
        ab = torch.cumprod(1.0 - beta, 0)
        return {"alpha_bar": ab, "alpha_bar_prev": torch.cat([ab.new_ones(1), ab[:-1]]), "beta": beta,
                "1m_beta": 1.0 - beta}

    def derive_constants(self, derived):
        """m and log m [C], and bound_const's table f [C]: per position bound_const is f[x0] (see bound_const)."""
        ab = derived["alpha_bar"]
        m = torch.tensor(self.prior, dtype=ab.dtype, device=ab.device)
        log_m, eye = m.log(), torch.eye(self.n_classes, dtype=ab.dtype, device=ab.device)
        q_T, q_1 = ab[-1] * eye + (1 - ab[-1]) * m, ab[0] * eye + (1 - ab[0]) * m  # row c: q(x_t | x0 = c)
        entropy = lambda q: -torch.xlogy(q, q).sum(1)  # noqa: E731
        f = (q_T @ log_m + entropy(q_T) - entropy(q_1) + log_m - q_1 @ log_m)  # the five terms of Diffusion.bound_const
        return {"m": m, "log_m": log_m, "bound_const_f": f}

    def _constant(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A [C] constant in like's compute dtype, on like's device, shaped [C, 1, ..., 1] against [C, *like.shape]."""
        value = self.tables()[compute_dtype(like)].constants[name].to(like.device)
        return value.view(-1, *([1] * like.dim()))

    def _onehot(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[x == j] for j = 0..C-1: [C, *x.shape]."""
        classes = torch.arange(self.n_classes, device=x.device).view(-1, *([1] * x.dim()))
        return (x.long()[None] == classes).to(dtype)

    def bound_const(self, x0):
        """Diffusion.bound_const in closed form: [N] nats. Every term depends on a position only through its class c,
        by q(x_t | x0 = c) = alpha_bar_t e_c + (1 - alpha_bar_t) m, so per position it is f[c] (derive_constants)."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            f = self.tables()[compute_dtype(x0)].constants["bound_const_f"].to(x0.device)
            return sum_dims(f[x0.long()])

    # ---- the distributions ------------------------------------------------------------------------------
    def _mix(self, x: torch.Tensor, keep: torch.Tensor) -> Params:
        """log(keep [x = j] + (1 - keep) m_j) for j = 0..C-1: a C-tuple [N, *D] (keep broadcastable to x)."""
        dtype = keep.dtype if torch.is_tensor(keep) else compute_dtype(x)
        probs = keep * self._onehot(x, dtype) + (1 - keep) * self._constant("m", x)
        return tuple(probs.log().unbind(0))

    def marginal(self, x0, t):
        """q(x_t | x_0) = alpha_bar_t onehot(x0) + (1 - alpha_bar_t) m, t in 1..T."""
        return self._mix(x0, self.coef("alpha_bar", t, x0))

    def q_sample(self, x0, t, generator=None, keys=None, noise=None):
        """x_t ~ q(x_t | x_0) by inverse CDF (draw_classes) of one uniform per position: keyed, the given uniforms
        `noise` [N, *D], or from `generator`."""
        probs = torch.exp(stack(self.marginal(x0, t)))
        if noise is not None:
            u = noise
        elif keys is not None:
            u = keyed_uniform(x0, t, keys)
        else:
            u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=probs.dtype)
        return draw_classes(probs, u.to(probs.dtype)).to(x0.dtype)

    def q_posterior(self, x0, xt, t):
        """q(x_{t-1} | x_t, x_0) for t in 2..T: the forward step into x_t times the marginal at t - 1, normalised
        over the C classes of x_{t-1} (module docstring). Every class has mass > 0 for m > 0 and beta_t > 0."""
        dtype = compute_dtype(x0)
        m = self._constant("m", x0)
        beta, ab_prev = self.coef("beta", t, xt), self.coef("alpha_bar_prev", t, x0)
        m_xt = (self._onehot(xt, dtype) * m).sum(0)  # m at x_t, [N, *D]
        step = (1 - beta) * self._onehot(xt, dtype) + beta * m_xt  # q(x_t | x_{t-1} = j)
        before = ab_prev * self._onehot(x0, dtype) + (1 - ab_prev) * m  # q(x_{t-1} = j | x0)
        num = step * before
        return tuple((num.log() - num.sum(0).log()).unbind(0))

    def p_params(self, out, xt, t):
        """p(x_{t-1} | x_t) = softmax(log forward_kernel(x_t) + z) over the classes, z = out [N, C, *D]."""
        logits = stack(self.forward_kernel(xt, t)) + out.movedim(1, 0)
        return tuple(torch.log_softmax(logits, 0).unbind(0))

    def forward_kernel(self, x, t):
        """(1 - beta_t) onehot(x) + beta_t m: q(x_t | x_{t-1} = x), and the fixed last step p(x_0 | x_1 = x) at t = 1
        (Q_t is reversible with respect to m, so Bayes' rule with pi = m gives it back)."""
        return self._mix(x, self.coef("1m_beta", t, x))

    def kl(self, q, p):
        lq, lp = stack(q), stack(p)
        return expected(lq, lq - lp)

    def entropy(self, q):
        lq = stack(q)
        return -expected(lq, lq)

    def prior_cross_entropy(self, q):
        lq = stack(q)
        return -expected(lq, self._constant("log_m", lq[0]).expand_as(lq))

    def log_prior(self, x):
        return self.tables()[compute_dtype(x)].constants["log_m"].to(x.device)[x.long()]

    def log_prob(self, p, x):
        """log p(x) per position, [N, *D]: the class x's entry of the C-tuple (broadcast to x)."""
        lp = stack(torch.broadcast_tensors(*p, x)[:-1])
        return lp.gather(0, x.long().expand(lp.shape[1:])[None])[0]

    def clamp(self, p, known, x_known):
        """All the mass on x_known where known: log-probability 0 at its class, -inf at the others."""
        at = self._onehot(x_known, p[0].dtype).expand(len(p), *torch.broadcast_shapes(known.shape, p[0].shape))
        fixed = torch.where(at > 0, 0.0, float("-inf"))
        return tuple(torch.where(known, f, lp) for f, lp in zip(fixed.unbind(0), p))

    def draw(self, p, generator=None):
        probs = torch.exp(stack(p))
        u = torch.rand(probs.shape[1:], generator=generator, device=probs.device, dtype=probs.dtype)
        return draw_classes(probs, u)

    def prior_sample(self, shape, generator=None, device="cpu"):
        u = torch.rand(shape, generator=generator, device=device)
        m = self.tables()[torch.float32].constants["m"].to(device)
        return draw_classes(m.view(-1, *([1] * len(shape))).expand(-1, *shape), u)
