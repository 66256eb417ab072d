"""Keyed random draws: each example's numbers are a function of (seed, example index, stream) only.

A torch.Generator hands out a stream: which numbers an example gets depends on where it sits in the batch, on
the batch size, on the rank and on the device. Evaluation needs better (docs/contracts.md, contract 7): the same K for
any batch size and any number of processes. Here every draw is a counter-based hash, splitmix64 (Steele, Lea &
Flood 2014) evaluated on int64 tensors with plain torch ops, so it runs on any device:

    key    = absorb(absorb(absorb(H0, seed), index), stream parts...)     one int64 per example
    bits_j = mix(key + (j + 1) * GOLDEN)                                  the j-th 64 random bits of that key

mix is splitmix64's finaliser. Multiplication wraps modulo 2^64 as int64 arithmetic does on every torch
device; the right shifts are logical (arithmetic shift, then a mask). The integers are bit-identical on every
device; the floats made from them are bit-identical on one device for any batch, and agree to float rounding
across devices (Box-Muller's log, cos and sin are computed in float64 and then rounded to the output dtype).

Uniforms use the top 23 (float32) or 52 (float64) bits: u = (k + 1/2) 2^-b, strictly inside (0, 1).
Normals: Box-Muller on two 32-bit uniforms from one 64-bit hash, computed in float64.

Streams name a purpose and its coordinates, e.g. (NOISE, t) for the forward noise at time t, (T_DRAW,) for the
choice of t, (DEQUANT,) for dequantisation. A stream part is an int or an [N] integer tensor (one value per
example, such as each example's own t).

Training does not need keys; it draws from a device generator seeded per (seed, rank, global step), so a
resumed run repeats the draws of an uninterrupted one on every rank without saving generator states
(step_generator).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch

MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN = _signed(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: splitmix64's increment
M1 = _signed(0xBF58476D1CE4E5B9)
M2 = _signed(0x94D049BB133111EB)
H0 = 0x2545F4914F6CDD1D  # the start of every key chain (any odd constant)

# purposes: the first part of a stream
NOISE = 1  # forward noise of q(x_t | x_0) (Gaussian eps, binomial uniforms); stream (NOISE, t)
T_DRAW = 2  # the choice of t (mc estimator, training); stream (T_DRAW,), one draw per stratum
DEQUANT = 3  # dequantisation noise of image data; stream (DEQUANT,)

StreamPart = Union[int, torch.Tensor]


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits by k (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (a bijection of the 64-bit patterns), any shape."""
    x = (x ^ _shr(x, 30)) * M1
    x = (x ^ _shr(x, 27)) * M2
    return x ^ _shr(x, 31)


def mix_int(x: int) -> int:
    """mix on one Python integer, modulo 2^64 (the reference the tensor version is tested against)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def absorb(h: torch.Tensor, v: StreamPart) -> torch.Tensor:
    """The keys h [N] (int64) extended by one more coordinate v (an int, or an [N] integer tensor)."""
    if isinstance(v, torch.Tensor):
        m = mix(v.to(device=h.device, dtype=torch.int64) + GOLDEN)
    else:
        m = _signed(mix_int(int(v) + GOLDEN))
    return mix(h ^ m)


def absorb_int(h: int, v: int) -> int:
    """absorb on Python integers, modulo 2^64."""
    return mix_int(h ^ mix_int(v + GOLDEN))


def make_key(seed: int, index: torch.Tensor, stream: Sequence[StreamPart] = ()) -> torch.Tensor:
    """The key [N] int64 of examples `index` [N] in `stream` under `seed`."""
    h = torch.full(index.shape, _signed(absorb_int(H0, int(seed))), dtype=torch.int64, device=index.device)
    h = absorb(h, index)
    for part in stream:
        h = absorb(h, part)
    return h


def key_bits(key: torch.Tensor, n: int) -> torch.Tensor:
    """n words of 64 random bits per key: [N] -> [N, n] int64, word j = mix(key + (j + 1) GOLDEN)."""
    j = torch.arange(1, n + 1, device=key.device, dtype=torch.int64) * GOLDEN
    return mix(key[:, None] + j)


_UNIFORM_BITS = {torch.float32: 23, torch.float64: 52}


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _UNIFORM_BITS:
        raise ValueError(f"keyed draws come in float32 or float64, not {dtype} (cast the result instead)")


def uniform_from_key(key: torch.Tensor, shape: Sequence[int] = (), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) strictly inside (0, 1), [N, *shape], from the keys [N]."""
    _check_dtype(dtype)
    b = _UNIFORM_BITS[dtype]
    n = math.prod(shape)
    k = _shr(key_bits(key, n), 64 - b)
    return ((k.to(dtype) + 0.5) * 2.0**-b).view(len(key), *shape)


def normal_from_key(key: torch.Tensor, shape: Sequence[int] = (), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1), [N, *shape], from the keys [N]: Box-Muller on the two 32-bit halves of each 64-bit word."""
    _check_dtype(dtype)
    n = math.prod(shape)
    words = key_bits(key, (n + 1) // 2)
    u1 = (_shr(words, 32).double() + 0.5) * 2.0**-32
    u2 = ((words & 0xFFFFFFFF).double() + 0.5) * 2.0**-32
    r, theta = torch.sqrt(-2.0 * torch.log(u1)), (2.0 * math.pi) * u2
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n]
    return z.to(dtype).view(len(key), *shape)


def keyed_uniform(seed: int, index: torch.Tensor, stream: Sequence[StreamPart], shape: Sequence[int] = (),
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) draws [N, *shape] for examples index [N]: row i depends on (seed, index[i], stream) only."""
    return uniform_from_key(make_key(seed, index, stream), shape, dtype)


def keyed_normal(seed: int, index: torch.Tensor, stream: Sequence[StreamPart], shape: Sequence[int] = (),
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) draws [N, *shape] for examples index [N]: row i depends on (seed, index[i], stream) only."""
    return normal_from_key(make_key(seed, index, stream), shape, dtype)


class Keys:
    """The keyed source of one batch: example i of the batch is example index[i] of the data set.

    Pass it to the math (K_per_example(..., keys=Keys(seed, index)), Diffusion.q_sample, stratified_t,
    DataModule.dequantize) instead of a torch.Generator; each example's draws then depend on (seed, its index,
    the stream) only. index: [N] integer tensor on the batch's device.
    """

    def __init__(self, seed: int, index: torch.Tensor) -> None:
        if index.dim() != 1 or index.is_floating_point():
            raise ValueError(f"Keys needs an [N] integer tensor of example indices; got {index.dtype} "
                             f"{tuple(index.shape)}")
        self.seed, self.index = int(seed), index.to(torch.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def device(self) -> torch.device:
        return self.index.device

    def uniform(self, stream: Sequence[StreamPart], shape: Sequence[int] = (),
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U(0, 1) [N, *shape]."""
        return keyed_uniform(self.seed, self.index, stream, shape, dtype)

    def normal(self, stream: Sequence[StreamPart], shape: Sequence[int] = (),
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, 1) [N, *shape]."""
        return keyed_normal(self.seed, self.index, stream, shape, dtype)

    def repeat(self, n: int) -> "Keys":
        """The keys of a batch repeated n times along dim 0 (x.repeat(n, ...)): index.repeat(n)."""
        return Keys(self.seed, self.index.repeat(n))


def dequantize(x0: torch.Tensor, width: float, keys: Keys) -> torch.Tensor:
    """x0 + u, u ~ U(-width/2, width/2) per element, keyed by (seed, example index, DEQUANT): [N, *D].

    The keyed form of ImageDataModule.dequantize (docs/paper.md §5.6): an example gets the same noise in any batch."""
    if width == 0.0:
        return x0
    u = keys.uniform((DEQUANT,), x0.shape[1:], torch.float64 if x0.dtype == torch.float64 else torch.float32)
    return dequantize_with(x0, u.to(x0.dtype), width)


def dequantize_with(x0: torch.Tensor, u: torch.Tensor, width: float) -> torch.Tensor:
    """x0 + (u - 1/2) width: the uniforms u ~ U(0, 1) [N, *D] made dequantisation noise U(-width/2, width/2)
    (docs/paper.md §5.6), whatever drew them (keys, a generator, the training step's one draw)."""
    return x0 + (u - 0.5) * width


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for the draws of training step `step` on rank `rank` (a splitmix64 hash chain)."""
    return absorb_int(absorb_int(absorb_int(H0, int(seed)), int(rank)), int(step)) >> 1


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> torch.Generator:
    """A generator on `device` seeded for (seed, rank, global step): training draws t and noise from it.

    Pass the previous step's generator back as `generator` to reseed it instead of making a new one (on a GPU
    it lives on the device, so t is drawn there without a host copy and without a sync). A resumed run gets
    the same draws as an uninterrupted one, on every rank, without saving any generator state.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if generator is None or generator.device != device:
        generator = torch.Generator(device=device)
    return generator.manual_seed(step_seed(seed, rank, step))
