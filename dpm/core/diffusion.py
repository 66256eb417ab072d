"""What every diffusion kind shares: the bound K of Eq. 14 (with its constant terms computed exactly) and
ancestral sampling. Each kind (dpm.core.gaussian, dpm.core.binomial, ...) fills in the distributions and answers for
itself what the rest of dpm asks of it: its data (check_data), its settings fitted to the data (fitted), whether its
schedule can be learned (fixed_schedule), which posterior factors r its kernels take (factors) and how a delta r
clamps them (clamp), and its name in figures (title). Nothing outside a kind's own file asks which kind it is.

Shapes: data x0, xt [N, *D] (D = (2,) for the Swiss roll, (20,) for the heartbeat, (C, H, W) for images);
times t [N] long in paper units 1..T; network output [N, n_outputs, *D]. Every log-probability is in nats.
A distribution's parameters travel as a tuple of tensors ("params") whose meaning the kind defines.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from dpm.core.keyed import NOISE, Keys
from dpm.core.schedules import Schedule

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # net(xt [N, *D], t [N]) -> [N, n_outputs, *D]
Params = tuple[torch.Tensor, ...]


def sum_dims(x: torch.Tensor) -> torch.Tensor:
    """[N, *D] -> [N]."""
    return x.flatten(1).sum(1)


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """float64 for float64 data; float32 for any other (float32, bf16, fp16): draws and coefficients."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def standard_normal(like: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                    keys: Keys | None = None) -> torch.Tensor:
    """N(0, I) noise shaped like `like` [N, *D] for the forward draw at times t [N]: from `generator`
    (a stream), or keyed by (seed, example index, NOISE, t) when keys are given."""
    if keys is not None:
        return keys.normal((NOISE, t), like.shape[1:], compute_dtype(like)).to(like.dtype)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def keyed_uniform(like: torch.Tensor, t: torch.Tensor, keys: Keys) -> torch.Tensor:
    """U(0, 1) shaped like `like` [N, *D] for the forward draw at times t [N], keyed by (seed, example index,
    NOISE, t) (streamed uniforms need no helper: torch.bernoulli draws them itself)."""
    return keys.uniform((NOISE, t), like.shape[1:], compute_dtype(like))


def check_source(generator: torch.Generator | None, keys: Keys | None, n: int) -> None:
    """A draw takes its randomness from a generator or from keys (one per example), not both."""
    if keys is not None and generator is not None:
        raise ValueError("pass a generator (streamed draws) or keys (keyed draws), not both")
    if keys is not None and len(keys) != n:
        raise ValueError(f"{len(keys)} keys for a batch of {n} examples")


class Tables(dict):
    """One dtype's tables: name -> [T + 1] (index 0 unused), each a column of one matrix [T + 1, n_tables]; and
    the kind's constants (Diffusion.derive_constants), name -> 0-d."""

    def __init__(self, matrix: torch.Tensor, names: list[str], constants: dict[str, torch.Tensor]) -> None:
        super().__init__((name, matrix[:, k]) for k, name in enumerate(names))
        self.matrix, self.columns, self.constants = matrix, {name: k for k, name in enumerate(names)}, constants


class Diffusion(nn.Module):
    """A forward process q with stationary distribution pi and the reverse kernel read from a network."""

    kind: str = ""  # its name: eval.json's "diffusion", figure titles
    n_outputs: int = 1  # network channels per data dimension
    noise: str = "normal"  # what q_sample's noise is: "normal" (N(0, 1)) or "uniform" (U(0, 1)) per dimension
    factors: tuple[type, ...] = ()  # the factors r of dpm.core.posterior its reverse kernels can be multiplied by
    fixed_schedule: str = ""  # why schedule.learned=true is refused with this kind; "": the schedule can be learned

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.T = schedule.T
        self._tables: dict[torch.dtype, Tables] | None = None
        self._tables_key: tuple | None = None
        self._pass_tables: dict[torch.dtype, Tables] | None = None
        self._pass_rows: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}  # in one_pass: t -> rows at t

    # ---- schedule-derived quantities, float64 [T] -------------------------------------------------
    def beta(self) -> torch.Tensor:
        return self.schedule()

    def alpha_bar(self) -> torch.Tensor:
        """prod_{s<=t} (1 - beta_s), float64 [T] (exactly 0 at t = T for the binomial schedule)."""
        return torch.cumprod(1.0 - self.beta(), 0)

    # ---- the same, precomputed: the tables the math reads at t -----------------------------------
    def derive(self, beta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-t coefficients this kind reads, from beta float64 [T]: name -> float64 [T] (t = 1..T).

        Computed in float64 and kept by tables() as float32 and float64 copies."""
        return {"beta": beta, "alpha_bar": torch.cumprod(1.0 - beta, 0)}

    def _build_tables(self) -> dict[torch.dtype, Tables]:
        with torch.autocast(device_type=self.schedule.base.device.type, enabled=False):
            derived = self.derive(self.schedule())
            constants = self.derive_constants(derived)
        # [T + 1] with a NaN at index 0, so a table is read at paper time t directly (and t = 0 shows up); all
        # of them the columns of one matrix [T + 1, n_tables], so that every coefficient at t is one gather
        names = list(derived)
        matrix = torch.stack([torch.cat([v.new_full((1,), float("nan")), v]) for v in derived.values()], 1)
        return {dtype: Tables(matrix.to(dtype), names, {k: v.to(dtype) for k, v in constants.items()})
                for dtype in (torch.float32, torch.float64)}

    def derive_constants(self, derived: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Numbers of the whole schedule a kind reads (0-d float64, from derive()'s tables), kept with the tables
        (Tables.constants) so that a step reads them instead of computing them; none by default."""
        return {}

    def tables(self) -> dict[torch.dtype, Tables]:
        """{float32: {name: [T + 1]}, float64: {...}}: derive()'s tables padded to be read at t (index 0 unused),
        on the schedule's device.

        A fixed schedule's tables are built once and rebuilt only when the schedule's tensors change (device,
        load_state_dict, an optimizer step on a learned schedule: their version counters). They are plain
        attributes, not buffers: never in a checkpoint, never broadcast by DDP or averaged by EMA, and never cast
        by module.to(dtype), so bf16 and fp16 modules keep float32 coefficients. A learned schedule under autograd
        gets fresh tables with their graph (once per one_pass(), e.g. once per K_per_example).
        """
        if self._pass_tables is not None:
            return self._pass_tables
        if self.schedule.learned and torch.is_grad_enabled():
            return self._build_tables()
        key = tuple((p.data_ptr(), p._version, p.device) for p in self.schedule.tensors())
        if self._tables is None or key != self._tables_key:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors even inside inference_mode
                self._tables, self._tables_key = self._build_tables(), key
        return self._tables

    def coef(self, name: str, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at paper times t [N], shaped [N, 1, ...] to broadcast against like [N, *D]: float64 for
        float64 data, float32 otherwise (under autocast, bf16 or fp16 too, so the bound stays in float32).

        t an int (one time for every example): a 0-d view of the table, no gather and no tensor made. Within
        one_pass(), the first read at a tensor t gathers every table's row at t at once (one operator) and
        later reads at the same t take their column of it."""
        dtype = compute_dtype(like)
        tables = self.tables()[dtype]
        if isinstance(t, int):
            return tables[name][t]
        shape = (-1, *([1] * (like.dim() - 1)))
        if self._pass_tables is None:
            return tables[name][t].view(shape)
        seen = self._pass_rows.get(dtype)
        if seen is None or seen[0] is not t:
            seen = self._pass_rows[dtype] = (t, tables.matrix[t])
        return seen[1][:, tables.columns[name]].view(shape)

    @contextmanager
    def one_pass(self) -> Iterator[None]:
        """Within it, every read shares one set of tables (a learned schedule's are built once, with its graph)."""
        if self._pass_tables is not None:
            yield
            return
        self._pass_tables = self.tables()
        try:
            yield
        finally:
            self._pass_tables = None
            self._pass_rows.clear()

    # ---- what each kind defines ---------------------------------------------------------------------
    @classmethod
    def fitted(cls, settings: dict, x0: torch.Tensor, classes: int | None = None) -> dict:
        """The settings a config leaves to the data (given as null), fitted to the training split x0 [N, *D] (whose
        values are integer classes 0..classes-1 where the data module says so, else classes is None): {key: value},
        recorded in the run's config. None by default."""
        return {}

    @property
    def title(self) -> str:
        """How figures name this diffusion, e.g. "binomial diffusion towards B(0.2)"."""
        return f"{self.kind} diffusion"

    def check_data(self, x0: torch.Tensor) -> None:
        """Raise ValueError when x0 is not data this diffusion can model."""

    def clamp(self, p: Params, known: torch.Tensor, x_known: torch.Tensor) -> Params:
        """r a delta on the known coordinates, multiplied in exactly (docs/paper.md §6.1, 6.3): the kernel p [N, *D]
        with all its mass on x_known where `known` is True, unchanged elsewhere (known bool and x_known
        broadcastable to [N, *D]). A kind without it takes no delta r (task=inpaint, complete)."""
        raise NotImplementedError(f"{self.kind} diffusion has no clamp for a delta r")

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> Params:
        """q(x_t | x_0)."""
        raise NotImplementedError

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                 keys: Keys | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0), differentiable in beta where the kind allows (frozen noise, paper 3.5).

        The noise comes from `generator` (a stream), with keys from each example's (seed, index, NOISE, t), or
        is given as `noise` [N, *D] (of the kind named by the class's `noise`, drawn by the caller)."""
        raise NotImplementedError

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> Params:
        """q(x_{t-1} | x_t, x_0), t >= 2."""
        raise NotImplementedError

    def p_params(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> Params:
        """p(x_{t-1} | x_t) from the network output out [N, n_outputs, *D], t >= 2."""
        raise NotImplementedError

    def forward_kernel(self, x: torch.Tensor, t: torch.Tensor) -> Params:
        """T_pi(. | x; beta_t), i.e. q(x_t | x_{t-1} = x); also the fixed last reverse step p(x_0 | x_1) at t = 1."""
        raise NotImplementedError

    def kl(self, q: Params, p: Params) -> torch.Tensor:
        """KL(q || p) per dimension, [N, *D]."""
        raise NotImplementedError

    def entropy(self, q: Params) -> torch.Tensor:
        """H(q) per dimension, [N, *D]."""
        raise NotImplementedError

    def prior_cross_entropy(self, q: Params) -> torch.Tensor:
        """-E_q[log pi(x)] per dimension, [N, *D]."""
        raise NotImplementedError

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """log pi(x) per dimension, [N, *D]."""
        raise NotImplementedError

    def log_prob(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        """log of the density (Gaussian) or mass (binomial) of the distribution p at x, per dimension: [N, *D]
        (p's tensors broadcastable to x)."""
        raise NotImplementedError

    def draw(self, p: Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample from the distribution p."""
        raise NotImplementedError

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """x_T ~ pi, [N, *D]."""
        raise NotImplementedError

    # ---- the bound ----------------------------------------------------------------------------------
    def kl_term(self, net: Net, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                keys: Keys | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) at one draw of x_t ~ q(x_t|x_0), summed over dims: [N] nats.

        The term of Eq. 14 for each example's own t (t [N], 2..T). The network may run under autocast; its
        output is cast to float32 and the distributions are computed with autocast off. x_t is drawn from
        `generator`, keyed (keys: dpm.core.keyed.Keys, one per example), or from the given `noise` (q_sample).
        """
        check_source(generator, keys, x0.shape[0])
        with self.one_pass():
            xt = self.q_sample(x0, t, generator, keys, noise)
            out = net(xt, t)
            with torch.autocast(device_type=x0.device.type, enabled=False):
                out = out.float()
                return sum_dims(self.kl(self.q_posterior(x0, xt, t), self.p_params(out, xt, t)))

    def bound_const(self, x0: torch.Tensor) -> torch.Tensor:
        """The terms of K that involve no network, exactly, per example: [N] nats.

        E_q[log pi(x_T)] + H_q(X_T|x0) - H_q(X_1|x0) + log pi(x0) - E_q[log pi(x_1)|x0].
        Eq. 14 writes the first as -H_p(X_T) and drops the last two (the fixed step p(x0|x1) of App. B.2);
        both shortcuts hold only on average and only for data matched to pi, so they are kept here, and then
        K_i <= log p(x0_i) holds for every example. Here the five terms are written out; each kind overrides this
        with their closed form (a few operators per step instead of about thirty), tested against this one.
        """
        with torch.autocast(device_type=x0.device.type, enabled=False), self.one_pass():
            x0 = x0.float()
            qT, q1 = self.marginal(x0, self.T), self.marginal(x0, 1)  # int times: table views, no gather
            per_dim = (-self.prior_cross_entropy(qT) + self.entropy(qT) - self.entropy(q1)
                       + self.log_prior(x0) + self.prior_cross_entropy(q1))
        return sum_dims(per_dim)

    def L_null(self, x0: torch.Tensor) -> torch.Tensor:
        """log pi(x0) per example, [N] nats: the log-likelihood of the data under the prior (Table 1's L_null)."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            return sum_dims(self.log_prior(x0.float()))

    # ---- sampling -----------------------------------------------------------------------------------
    def reverse_kernel(self, net: Net, xt: torch.Tensor, step: int, chunk: int | None = None) -> Params:
        """p(x_{t-1} | x_t) for every row of xt [N, *D] at the paper time t = step (an int, so that choosing the
        kernel waits for no device): the network's kernel for t >= 2, the fixed forward kernel p(x_0 | x_1) at
        t = 1 (App. B.2). The network sees at most `chunk` rows per call (None: all of them), so many particles
        fit in memory."""
        t = torch.full((len(xt),), step, device=xt.device, dtype=torch.long)
        if step == 1:
            return self.forward_kernel(xt, t)
        if chunk is None or chunk >= len(xt):
            out = net(xt, t)
        else:
            out = torch.cat([net(x, s) for x, s in zip(xt.split(chunk), t.split(chunk))])
        with torch.autocast(device_type=xt.device.type, enabled=False):
            return self.p_params(out.float(), xt, t)

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", keep: tuple[int, ...] = (),
               on_step: Callable[[int], None] | None = None,
               perturb: Callable[[Params, torch.Tensor, torch.Tensor], Params] | None = None,
               x_T: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Ancestral sampling x_T ~ pi, x_{t-1} ~ p(x_{t-1}|x_t) for t = T..2, then the fixed p(x_0|x_1).

        Unlike the released sampler, the final fixed step is applied (docs/paper.md §6.3). Returns x0 [N, *D] and
        the states x_t for every t in `keep` (t = T..0). on_step(1) is called after each of the T steps
        (a dpm.io.progress.Progress's update).
        perturb(p, x_t, t) -> p~ replaces every step's kernel, the fixed last one included, by the perturbed
        kernel p(x_{t-1}|x_t) r(x_{t-1}) / Z (Eq. 22; dpm.core.posterior). x_T [N, *D], when given, is the start
        state in place of a draw from pi (denoising starts from the observation y, docs/paper.md §6.3).
        """
        x = self.prior_sample(shape, generator, device) if x_T is None else x_T
        kept = {self.T: x} if self.T in keep else {}
        for step in range(self.T, 0, -1):
            p = self.reverse_kernel(net, x, step)
            if perturb is not None:
                p = perturb(p, x, torch.full((shape[0],), step, device=x.device, dtype=torch.long))
            x = self.draw(p, generator)
            if step - 1 in keep:
                kept[step - 1] = x
            if on_step is not None:
                on_step(1)
        return x, kept
