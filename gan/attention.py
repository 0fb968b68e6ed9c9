"""The non-local block family (Wang et al. 2018) with SAGAN's gated residual (Zhang et al. 2019).

    y_i = (1 / C(x)) * sum_j f(x_i, x_j) g(x_j),    z = x + gamma * out(y)

over all positions j of a sequence (B, C, L), an image (B, C, H, W) or a video (B, C, T, H, W): `dim` = 1, 2
or 3. Positions are flattened once, in C order ((t, h, w) for video), to Nq query positions; the weights
are (B, Nq, N) whatever `dim` is, and the output is restored to the input's grid once.
`theta`, `phi`, `g` and `out` are 1x1 (1x1x1) convolutions without bias. The pairwise function f is one of

    embedded_gaussian  f = exp(theta(x_i)^T phi(x_j)),      C = sum_j f   (softmax; SAGAN, no 1/sqrt(d))
    dot_product        f = theta(x_i)^T phi(x_j),           C = N
    concatenation      f = ReLU(w_f^T [theta(x_i); phi(x_j)]), C = N
    gaussian           f = exp(x_i^T x_j) on the raw input, C = sum_j f
    l2                 f = exp(-||theta(x_i) - theta(x_j)||^2 / sqrt(d)),   C = sum_j f   (phi tied to theta)
    cosine             f = exp(t cos(theta(x_i), phi(x_j))),                  C = sum_j f   (t: `temperature`)

where N is the number of key positions and d the query/key width. l2 is the Lipschitz attention of
ViTGAN / GigaGAN's discriminators (keys from the query projection, pooled like phi when subsampling);
cosine bounds every logit to [-t, t], so the softmax's sharpness is set by t, not by the size of the
(spectrally normalised) projections. `logit_scale` multiplies the softmax variants' logits
theta_i^T phi_j by s: "one" (s = 1, SAGAN), "inv_sqrt_d" (s = 1/sqrt(d_qk), the transformer and video
non-local code; d_qk = C for the Gaussian), or "learned" (s = exp(log_tau), a learnable temperature
starting at 1). dot_product and concatenation divide by N, not by a softmax sum, so a logit scale there
would only rescale out(y); they accept "one" only.

Subsampling: with `subsample=True`, phi(x) and g(x) (or x itself for the Gaussian) are max-pooled with
kernel = stride (2,) in 1D, (2, 2) in 2D and (1, 2, 2) in 3D (space only, as the video non-local networks
do), or with any per-axis kernel given as `pool`, e.g. (2, 2, 2). Pooling uses `ceil_mode=True`: an odd
side of 2k+1 gives k+1 key rows, the last one pooling a single row, so every position still contributes
as a key. The pooling comes after the phi / g projections (as SAGAN and BigGAN do); the original video
code pools x before them. The two differ, since max-pooling does not commute with a 1x1 convolution
(max_j W x_j != W max_j x_j in general): keys here are the largest projected features of each window, not
projections of its largest inputs.

Heads (`heads=h`) split theta/phi and g into h groups of channels that attend on their own, folded into the
batch; h = 1 is SAGAN's single head. A relative position term (`position_max_side`) adds b_h(offset(i, j))
to the softmax logits (gan/attention_variants.py defines the offset under pooling). Each pairwise function, gate and
position term is a small strategy the block looks up; every option is checked by gan/attention_rules.py.

Two computations, one result:
- the explicit path materialises the (Nq x N) weight matrix; it serves every pairwise function and
  `return_attention=True` / `record_attention`;
- the fused path hands the softmax variants to `scaled_dot_product_attention(scale=s)` (the position term
  as its additive `attn_mask`), which never materialises the matrix on its flash / memory-efficient kernels. CPU's flash kernel needs queries/keys as
  wide as values, so theta/phi are zero-padded up to the value width there: zeros add nothing to a dot
  product, so every logit is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.attention_rules import AXES as _AXES
from gan.attention_rules import COSINE_TEMPERATURE, check_block_options  # noqa: F401 (re-exported)
from gan.attention_variants import GATE_KINDS, PAIRWISE_FUNCTIONS, POSITION_TERMS
from gan.choices import GATES, LOGIT_SCALES, PAIRWISE  # noqa: F401 (LOGIT_SCALES: re-exported with the others)
from gan.layers import spectral_norm

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@dataclass
class AttentionRecord:
    """One block call seen under `record_attention`; grids are (L,), (H, W) or (T, H, W)."""

    name: str  # qualified module name, e.g. "blocks.2.attention"
    weights: Tensor  # (B, Nq, N) float32, detached: f / C(x), positions flattened in C order
    query_shape: tuple[int, ...]  # the block's input grid, Nq = its product
    key_shape: tuple[int, ...]  # the (pooled) key grid, N = its product

    @property
    def query_hw(self) -> tuple[int, int]:
        """(Hq, Wq) of a 2D block (what the image figures read)."""
        return _hw(self.query_shape)

    @property
    def key_hw(self) -> tuple[int, int]:
        """(Hk, Wk) of a 2D block."""
        return _hw(self.key_shape)


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"query_hw / key_hw describe 2D blocks; this grid is {shape}: read query_shape / key_shape")
    return shape[0], shape[1]


def _at_least_float32(t: Tensor) -> Tensor:
    """Half-precision tensors go up to float32 (for softmax); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _conv1x1(dim: int, cin: int, cout: int, sn: bool) -> nn.Module:
    conv = _CONV[dim](cin, cout, kernel_size=1, bias=False)
    return spectral_norm(conv) if sn else conv  # power iteration in float32 even under autocast


def gate_of(block: NonLocalBlock) -> tuple[str, float]:
    """A block's gate kind (one of GATES) and how far it is open, the one place both are read: gamma itself
    (signed), the Frobenius norm of `out`'s weight ("zero_init") or the RMS of the gains tanh(a) ("channel");
    at 0 the block is the identity. Training logs it as `gate/<kind>/<net>.<block>`."""
    return block.gate, GATE_KINDS[block.gate].value(block)


class NonLocalBlock(nn.Module):
    """Non-local / self-attention block on (B, C, L), (B, C, H, W) or (B, C, T, H, W) for `dim` = 1, 2, 3;
    the identity at initialisation (unless `gamma_init` says otherwise).

    Every option is public API and checked by gan/attention_rules.py; those a GAN's 2D blocks can use are set by
    the config key in brackets (gan.models builds the blocks from gan.config.attention_options).
    - `channels`: C of the input; `dim`: 1 sequence, 2 image, 3 video (the GAN's blocks are 2D).
    - `pairwise`: f, one of PAIRWISE (module docstring) [model.attn_lab.pairwise].
    - `qk_channels`, `v_channels`: widths of theta/phi and of g (default C/8, C/2; the Gaussian uses C)
      [C // model.attn_qk_divisor, C // model.attn_v_divisor].
    - `subsample`, `pool`: max-pool the keys and values; `pool` gives the kernel per axis (module docstring)
      [model.attn_subsample; `pool` is for 1D/3D use].
    - `gate`: the residual gate, one of GATES [model.attn_gate]. "gamma": z = x + gamma * out(y), gamma
      starting at `gamma_init` (0 in SAGAN; non-zero gives up the identity at initialisation)
      [model.attn_lab.gamma_init]. "zero_init": z = x + out(y), `out`'s weight starting at 0 and left
      unnormalised (spectral norm cannot represent a zero weight). "channel": z = x + tanh(a) * out(y), one
      gain per channel, a at 0. `gate_of(block)` reads its kind and how far it is open.
    - `spectral_norm`: normalise the 1x1 convolutions [model.g_spectral_norm / model.d_spectral_norm];
      `qk_spectral_norm` normalises theta/phi independently of g/out (None: follow `spectral_norm`)
      [model.attn_lab.qk_spectral_norm].
    - `fused`: the fused path when no weights are needed (module docstring) [model.attn_fused].
    - `logit_scale`: one of LOGIT_SCALES, softmax variants only (module docstring) [model.attn_lab.logit_scale].
    - `temperature`: t of pairwise="cosine" (None: `COSINE_TEMPERATURE`); the other functions take none
      [model.attn_lab.temperature].
    - `heads`: split theta/phi and g into this many heads, each attending on its own (C/h channels each);
      1 is SAGAN's single head [model.attn_heads]. `return_attention` then gives (B, h, Nq, N) weights and
      `record_attention` their mean over heads.
    - `position_max_side`: add a relative position term b_h(offset(i, j)) to the softmax logits, zero at
      initialisation, one table per head covering maps with sides up to this (0: none; the offset is defined
      in gan/attention_variants.py) [model.attn_lab.position_max_side].
    """

    def __init__(
        self,
        channels: int,
        *,
        dim: int = 2,
        pairwise: str = "embedded_gaussian",
        qk_channels: int | None = None,
        v_channels: int | None = None,
        subsample: bool = True,
        pool: tuple[int, ...] | None = None,
        gate: str = "gamma",
        spectral_norm: bool = True,
        fused: bool = True,
        logit_scale: str = "one",
        gamma_init: float = 0.0,
        qk_spectral_norm: bool | None = None,
        temperature: float | None = None,
        heads: int = 1,
        position_max_side: int = 0,
    ) -> None:
        super().__init__()
        rules = check_block_options(
            dim=dim, pairwise=pairwise, gate=gate, logit_scale=logit_scale, temperature=temperature,
            gamma_init=gamma_init, subsample=subsample, pool=pool, heads=heads, position_max_side=position_max_side,
            channels=channels, qk_channels=qk_channels, v_channels=v_channels,
        )  # fmt: skip
        self.channels, self.dim, self.pairwise, self.gate, self.heads = channels, dim, pairwise, gate, heads
        self.subsample, self.pool, self.fused, self.logit_scale = subsample, rules.pool, fused, logit_scale
        self.temperature, self.qk_channels, self.v_channels = rules.temperature, rules.qk_channels, rules.v_channels
        self.position_max_side, self.f, gate_kind = position_max_side, PAIRWISE_FUNCTIONS[pairwise], GATE_KINDS[gate]
        self.position = POSITION_TERMS["relative" if position_max_side else "none"]

        qk_sn = spectral_norm if qk_spectral_norm is None else qk_spectral_norm
        if self.f.keys != "x":
            self.theta = _conv1x1(dim, channels, self.qk_channels, qk_sn)
        if self.f.keys == "phi":
            self.phi = _conv1x1(dim, channels, self.qk_channels, qk_sn)
        self.f.add_parameters(self)
        self.g = _conv1x1(dim, channels, self.v_channels, spectral_norm)
        self.out = _conv1x1(dim, self.v_channels, channels, spectral_norm and gate_kind.out_spectral_norm)
        gate_kind.add_parameters(self, gamma_init)
        if logit_scale == "learned":  # registered only when chosen: older state dicts still load
            self.log_tau = nn.Parameter(torch.zeros(()))  # temperature exp(log_tau), starting at 1
        self.position.add_parameters(self)
        self._records: list[AttentionRecord] | None = None  # set by record_attention
        self._record_name = ""

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, dim={self.dim}, pairwise={self.pairwise}, qk={self.qk_channels}, v={self.v_channels}, "
            f"pool={self.pool}, gate={self.gate}, fused={self.fused}, logit_scale={self.logit_scale}"
            + (f", temperature={self.temperature}" if self.temperature is not None else "")
            + (f", heads={self.heads}" if self.heads > 1 else "")
            + (f", position_max_side={self.position_max_side}" if self.position_max_side else "")
        )

    # -- pieces ---------------------------------------------------------------------------------

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """theta(x) as queries, phi(x) as keys, g(x) as values, positions flattened; and the key grid."""
        theta = x if self.f.keys == "x" else self.theta(x)  # (B, Cqk, *S)
        phi = self.phi(x) if self.f.keys == "phi" else theta  # (B, Cqk, *S)
        g = self.g(x)  # (B, Cv, *S)
        if self.pool is not None:  # after the projections; per axis ceil(S_a / k_a) keys
            phi = _MAX_POOL[self.dim](phi, self.pool, self.pool, ceil_mode=True)  # (B, Cqk, *S_k)
            g = _MAX_POOL[self.dim](g, self.pool, self.pool, ceil_mode=True)  # (B, Cv, *S_k)
        if self.logit_scale == "learned":  # exp(log_tau) theta_i^T phi_j, on both paths, through q
            theta = theta * self.log_tau.exp().to(theta.dtype)
        q = theta.flatten(2).transpose(1, 2)  # (B, Nq, Cqk), Nq = prod(S)
        k = phi.flatten(2).transpose(1, 2)  # (B, N, Cqk), N = prod(S_k)
        v = g.flatten(2).transpose(1, 2)  # (B, N, Cv)
        return q, k, v, tuple(phi.shape[2:])

    def pairwise_logits(self, q: Tensor, k: Tensor) -> Tensor:
        """The softmax variants' logits, as the block scales them: (..., Nq, N) for q (..., Nq, d), k (..., N, d)."""
        return self.f.logits(self, q, k)

    def position_logits(self, grid: tuple[int, ...], key_grid: tuple[int, ...]) -> Tensor | None:
        """The position term b_h(offset(i, j)) on these grids: (h, Nq, N); None without one."""
        return self.position.bias(self, grid, key_grid)

    def _weights(self, q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
        """Normalised weights f(x_i, x_j) / C(x): (B h, Nq, N), heads folded into the batch; softmax rows at
        least in float32, over the pairwise logits plus the position term `bias` (h, Nq, N) if any."""
        if not self.f.softmax:
            return self.f.weights(self, q, k)
        logits = _at_least_float32(self.pairwise_logits(q, k))  # (B h, Nq, N)
        if bias is not None:
            logits = (logits.unflatten(0, (-1, self.heads)) + bias.to(logits.dtype)).flatten(0, 1)  # (B h, Nq, N)
        return torch.softmax(logits, dim=-1)

    def _split_heads(self, t: Tensor) -> Tensor:
        """(B, N, C) -> (B h, N, C / h): head n takes channels n C/h ... (n + 1) C/h - 1."""
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2).flatten(0, 1)

    def _merge_heads(self, y: Tensor) -> Tensor:
        """(B h, Nq, Cv / h) -> (B, Nq, Cv), the inverse of `_split_heads`."""
        return y.unflatten(0, (-1, self.heads)).transpose(1, 2).flatten(2)

    def _fused_attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        """softmax(s q k^T + bias) v without the (Nq x N) matrix: (B h, Nq, Cv / h); the position term goes in
        as SDPA's additive float mask."""
        q, k, scale = self.f.fused_inputs(self, q, k)
        pad, cv = v.shape[-1] - q.shape[-1], v.shape[-1]
        if pad != 0 and (q.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16)):
            # Flash kernels want equal head sizes; zero columns leave every q.k unchanged, and zero value
            # columns (when q is the wider, as l2's extra channel can make it) give zero outputs, cut below.
            q, k = (F.pad(q, (0, pad)), F.pad(k, (0, pad))) if pad > 0 else (q, k)  # (B h, Nq, C), (B h, N, C)
            v = F.pad(v, (0, -pad)) if pad < 0 else v  # (B h, N, C)
        y = F.scaled_dot_product_attention(
            q.unflatten(0, (-1, self.heads)).contiguous(),  # (B, h, Nq, C)
            k.unflatten(0, (-1, self.heads)).contiguous(),  # (B, h, N, C)
            v.unflatten(0, (-1, self.heads)).contiguous(),  # (B, h, N, Cv); a non-contiguous last dim: SDPA's math path
            attn_mask=bias.to(q.dtype) if bias is not None else None,  # (h, Nq, N), broadcast over B
            scale=scale,  # explicit: padding q/k must not change SDPA's 1/sqrt(width)
        )
        return y.flatten(0, 1)[..., :cv]  # (B h, Nq, Cv / h)

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != self.dim + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"NonLocalBlock({self.channels}) with dim={self.dim} expects (B, {self.channels}, {_AXES[self.dim]}); "
                f"got {tuple(x.shape)} (dim=1: sequences, 2: images, 3: videos)"
            )
        grid = tuple(x.shape[2:])  # S: (L,), (H, W) or (T, H, W)
        q, k, v, key_grid = self.project(x)  # (B, Nq, Cqk), (B, N, Cqk), (B, N, Cv)
        q, k, v = (self._split_heads(t) for t in (q, k, v))  # (B h, Nq, Cqk / h), (B h, N, ...), (B h, N, Cv / h)
        bias = self.position_logits(grid, key_grid)  # (h, Nq, N) or None
        need_weights = return_attention or self._records is not None
        if need_weights or not (self.fused and self.f.softmax):
            attn = self._weights(q, k, bias)  # (B h, Nq, N)
            y = torch.bmm(attn.to(v.dtype), v)  # (B h, Nq, Cv / h)
        else:
            attn = None
            y = self._fused_attend(q, k, v, bias)  # (B h, Nq, Cv / h)
        y = self._merge_heads(y)  # (B, Nq, Cv)
        y = y.transpose(1, 2).reshape(x.shape[0], self.v_channels, *grid)  # (B, Cv, *S)
        z = x + GATE_KINDS[self.gate].apply(self, self.out(y))  # out(y): (B, C, *S)
        if attn is not None:
            attn = attn.unflatten(0, (-1, self.heads))  # (B, h, Nq, N)
            attn = attn.squeeze(1) if self.heads == 1 else attn  # one head: (B, Nq, N), as SAGAN's block
        if self._records is not None:  # the heads' mean: still a distribution over the keys, (B, Nq, N)
            mean = attn if self.heads == 1 else attn.mean(1)
            self._records.append(AttentionRecord(self._record_name, mean.detach().float(), grid, key_grid))
        return (z, attn) if return_attention else z

    def gate_value(self) -> float:
        """How far the residual gate is open (`gate_of(self)[1]`)."""
        return gate_of(self)[1]

    def gate_parameter(self) -> nn.Parameter:
        """The parameter whose zero makes the block the identity: gamma, the gains' a, or `out`'s weight."""
        return GATE_KINDS[self.gate].parameter(self)


# ----------------------------------------------------------------------------------------------
# Inspection helpers


def attention_blocks(module: nn.Module) -> list[tuple[str, NonLocalBlock]]:
    """Every NonLocalBlock inside `module`, with its qualified name, in registration order."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, NonLocalBlock)]


@contextlib.contextmanager
def record_attention(module: nn.Module) -> Iterator[list[AttentionRecord]]:
    """Collect the attention weights of every block call made inside the `with` (explicit path)."""
    records: list[AttentionRecord] = []
    blocks = attention_blocks(module)
    for name, block in blocks:
        block._records, block._record_name = records, name
    try:
        yield records
    finally:
        for _, block in blocks:
            block._records = None


def attention_entropy(weights: Tensor) -> Tensor:
    """Mean entropy (nats) of the attention rows of `weights` (..., N); log N means uniform attention."""
    p = weights.float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
