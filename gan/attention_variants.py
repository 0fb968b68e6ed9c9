"""The variants of gan/attention.py's NonLocalBlock as small stateless strategies the block looks up by name:
the pairwise functions f (PAIRWISE_FUNCTIONS), the residual gates (GATE_KINDS) and the position terms
(POSITION_TERMS). Each reads what it needs (a temperature, w_f, gamma, the table) from the block, where the
parameters live under the names that checkpoints, exports and gan/convert_biggan.py expect. Queries and keys
are (B', Nq, d) and (B', N, d), heads folded into the batch B'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.choices import GATES, PAIRWISE

NonLocalBlock = nn.Module  # the gan.attention.NonLocalBlock a strategy serves (that module imports this one)

# ----------------------------------------------------------------------------------------------
# Pairwise functions


def _dot(q: Tensor, k: Tensor) -> Tensor:
    """theta_i^T phi_j for every pair: (..., Nq, N)."""
    return q @ k.transpose(-1, -2)


def _inv_sqrt_d(q: Tensor) -> float:
    """1/sqrt(d), d the width of a head's queries (logit_scale="inv_sqrt_d"; the learned scale is inside q)."""
    return 1.0 / math.sqrt(q.shape[-1])


class _Pairwise:
    """f = exp(theta_i^T phi_j) (SAGAN's embedded Gaussian): softmax over the logits s theta_i^T phi_j. The other
    functions subclass it, overriding what differs."""

    softmax = True  # C(x) = sum_j f: the weights are a softmax of logits, which the fused path can serve
    keys = "phi"  # where keys come from: "phi" (own projection), "theta" (tied to the queries), "x" (the input)

    def add_parameters(self, block: NonLocalBlock) -> None:
        """Parameters the function owns beyond theta / phi (registered on the block under today's names)."""

    def logits(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        logits = _dot(q, k)  # (B, Nq, N)
        return logits * _inv_sqrt_d(q) if block.logit_scale == "inv_sqrt_d" else logits

    def fused_inputs(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float]:
        """q', k', s with softmax(s q' k'^T) = softmax(logits): what SDPA is given."""
        return q, k, _inv_sqrt_d(q) if block.logit_scale == "inv_sqrt_d" else 1.0

    def weights(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        """f / C for the functions without a softmax (C = N)."""
        raise NotImplementedError


class _Gaussian(_Pairwise):
    """f = exp(x_i^T x_j) on the raw input: no theta / phi."""

    keys = "x"


class _DotProduct(_Pairwise):
    """f = theta_i^T phi_j, C = N."""

    softmax = False

    def weights(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        return _dot(q, k) / k.shape[-2]  # (B, Nq, N)


class _Concatenation(_Pairwise):
    """f = ReLU(w_f^T [theta_i; phi_j]), C = N."""

    softmax = False

    def add_parameters(self, block: NonLocalBlock) -> None:
        block.w_f = nn.Parameter(torch.randn(2 * block.qk_channels) / math.sqrt(2 * block.qk_channels))

    def weights(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        # w_f^T [theta_i; phi_j] = w_theta . theta_i + w_phi . phi_j, never building the pairs
        w_theta, w_phi = block.w_f.to(q.dtype).split(block.qk_channels)
        f = F.relu((q @ w_theta).unsqueeze(-1) + (k @ w_phi).unsqueeze(-2))  # (B, Nq, N)
        return f / k.shape[-2]


class _L2(_Pairwise):
    """f = exp(-||theta_i - theta_j||^2 / sqrt(d)), keys from the query projection (pooled like phi).

    Logits expanded as (2 q.k - |q|^2 - |k|^2) / sqrt(d) (the gradient of a distance's square root is undefined
    where q_i = k_j, as tied keys make common). Fused: -|q_i|^2 is the same for every key j, so it cancels in
    the softmax over j; what is left, (2 q.k - |k|^2) / sqrt(d), is s q'.k' with q' = [q, 1],
    k' = [k, -|k|^2 / 2] and s = 2 / sqrt(d): one more channel, no additive mask."""

    keys = "theta"

    def logits(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        sq_q, sq_k = q.pow(2).sum(-1, keepdim=True), k.pow(2).sum(-1).unsqueeze(-2)  # (.., Nq, 1), (.., 1, N)
        return (2.0 * _dot(q, k) - sq_q - sq_k) / math.sqrt(q.shape[-1])

    def fused_inputs(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float]:
        q1 = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)  # (B, Nq, d + 1)
        k1 = torch.cat([k, -0.5 * k.pow(2).sum(-1, keepdim=True)], dim=-1)  # (B, N, d + 1)
        return q1, k1, 2.0 / math.sqrt(q.shape[-1])


class _Cosine(_Pairwise):
    """f = exp(t cos(theta_i, phi_j)): logits in [-t, t], a zero vector's cosine 0. Fused: unit q, k and s = t."""

    def logits(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> Tensor:
        return block.temperature * _dot(F.normalize(q, dim=-1), F.normalize(k, dim=-1))

    def fused_inputs(self, block: NonLocalBlock, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float]:
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), block.temperature


PAIRWISE_FUNCTIONS: dict[str, _Pairwise] = {
    "embedded_gaussian": _Pairwise(),
    "dot_product": _DotProduct(),
    "concatenation": _Concatenation(),
    "gaussian": _Gaussian(),
    "l2": _L2(),
    "cosine": _Cosine(),
}
assert tuple(PAIRWISE_FUNCTIONS) == PAIRWISE


# ----------------------------------------------------------------------------------------------
# Gates: z = x + gate(out(y)); each says what it registers, how it scales out(y) and how far it is open.


class _Gamma:
    """z = x + gamma * out(y), gamma a learnable scalar starting at `gamma_init` (SAGAN: 0); value: gamma.
    The other gates subclass it, overriding every method."""

    out_spectral_norm = True  # whether `out` may be spectrally normalised

    def add_parameters(self, block: NonLocalBlock, gamma_init: float) -> None:
        block.gamma = nn.Parameter(torch.full((), float(gamma_init)))

    def apply(self, block: NonLocalBlock, o: Tensor) -> Tensor:
        return block.gamma.to(o.dtype) * o

    def parameter(self, block: NonLocalBlock) -> nn.Parameter:
        return block.gamma

    def value(self, block: NonLocalBlock) -> float:
        return float(block.gamma.detach())


class _ZeroInit(_Gamma):
    """z = x + out(y), `out`'s weight starting at 0 and unnormalised (spectral norm cannot represent a zero
    weight: 0/0); value: the Frobenius norm of `out`'s weight."""

    out_spectral_norm = False

    def add_parameters(self, block: NonLocalBlock, gamma_init: float) -> None:
        nn.init.zeros_(block.out.weight)

    def apply(self, block: NonLocalBlock, o: Tensor) -> Tensor:
        return o

    def parameter(self, block: NonLocalBlock) -> nn.Parameter:
        return block.out.weight

    def value(self, block: NonLocalBlock) -> float:
        return float(block.out.weight.detach().norm())


class _Channel(_Gamma):
    """z = x + tanh(a) * out(y), one gain per channel, a starting at 0; value: the RMS of tanh(a)."""

    def add_parameters(self, block: NonLocalBlock, gamma_init: float) -> None:
        block.gain = nn.Parameter(torch.zeros(block.channels))  # a in tanh(a), per channel

    def apply(self, block: NonLocalBlock, o: Tensor) -> Tensor:
        return block.gain.tanh().to(o.dtype).view(-1, *[1] * block.dim) * o  # (C, 1, ...) over (B, C, *S)

    def parameter(self, block: NonLocalBlock) -> nn.Parameter:
        return block.gain

    def value(self, block: NonLocalBlock) -> float:
        return float(block.gain.detach().tanh().pow(2).mean().sqrt())


GATE_KINDS: dict[str, _Gamma] = {"gamma": _Gamma(), "zero_init": _ZeroInit(), "channel": _Channel()}
assert tuple(GATE_KINDS) == GATES


# ----------------------------------------------------------------------------------------------
# The relative position term: logits_ij += b_h(offset(i, j)), one table per head, zero at initialisation.


def _kernel(block: NonLocalBlock) -> tuple[int, ...]:
    """The key pooling kernel per axis (1 on every axis without subsampling)."""
    return block.pool or (1,) * block.dim


class _NoPosition:
    """No position term: the logits are the pairwise function's alone."""

    def add_parameters(self, block: NonLocalBlock) -> None:
        """Nothing to register: state dicts without a position term keep their keys."""

    def bias(self, block: NonLocalBlock, grid: tuple[int, ...], key_grid: tuple[int, ...]) -> Tensor | None:
        return None


class _RelativePosition(_NoPosition):
    """b_h(offset(i, j)) from a table per head over every offset on maps with sides up to M.

    Per axis a, a query at input coordinate i_a and a key at pooled coordinate j_a (the window of input rows
    k_a j_a ... k_a j_a + k_a - 1, k_a the pooling kernel, 1 without pooling) are offset_a = i_a - k_a j_a
    input rows apart: the offset from the key window's first row, in input rows (k_a times the offset in the key
    grid's units). Two pairs share a bias exactly when one is the other moved by whole key windows; a ceil-mode
    last window of one row starts at its only row, so odd sides need no special case. On sides up to M,
    offset_a lies in [-k_a (ceil(M / k_a) - 1), M - 1]; the table holds one value per head and per joint offset.
    """

    def add_parameters(self, block: NonLocalBlock) -> None:
        sizes = [block.position_max_side + k * (-(-block.position_max_side // k) - 1) for k in _kernel(block)]
        block.position_bias = nn.Parameter(torch.zeros(block.heads, *sizes))  # (h, R_1, ..., R_dim)

    def bias(self, block: NonLocalBlock, grid: tuple[int, ...], key_grid: tuple[int, ...]) -> Tensor:
        """(h, Nq, N): the table read at every (query, key) pair's offset."""
        m = block.position_max_side
        if max(grid) > m:
            raise ValueError(f"the position term covers maps with sides up to {m} (position_max_side); got {grid}")
        dim, device = len(grid), block.position_bias.device
        index = []
        for a, (s, s_k, k) in enumerate(zip(grid, key_grid, _kernel(block))):
            i = torch.arange(s, device=device).view(*[1] * a, s, *[1] * (2 * dim - a - 1))  # query axis a
            j = torch.arange(s_k, device=device).view(*[1] * (dim + a), s_k, *[1] * (dim - a - 1))  # key axis a
            index.append((i - k * j + k * (-(-m // k) - 1)).expand(*grid, *key_grid).flatten(dim).flatten(0, dim - 1))
        return block.position_bias[(slice(None), *index)]  # (h, Nq, N): Nq, N flattened in C order


POSITION_TERMS: dict[str, _NoPosition] = {"none": _NoPosition(), "relative": _RelativePosition()}
