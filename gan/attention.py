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

Two computations, one result:
- the explicit path materialises the (Nq x N) weight matrix; it serves every pairwise function and
  `return_attention=True` / `record_attention`;
- the fused path hands the softmax variants to `scaled_dot_product_attention(scale=s)`, which never
  materialises the matrix on its flash / memory-efficient kernels. CPU's flash kernel needs queries/keys as
  wide as values, so theta/phi are zero-padded up to the value width there: zeros add nothing to a dot
  product, so every logit is unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.choices import GATES, LOGIT_SCALES, PAIRWISE
from gan.choices import SOFTMAX_PAIRWISE as _SOFTMAX
from gan.layers import spectral_norm

_OWN_SCALE = ("l2", "cosine")  # their formula fixes the logits' scale (1/sqrt(d), the temperature)
COSINE_TEMPERATURE = 8.0  # the default t of pairwise="cosine" (R3GAN2's choice)
_AXES = {1: "L", 2: "H, W", 3: "T, H, W"}  # the grid of each `dim`, for messages
_SUBSAMPLE = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}  # subsample=True's kernel: video pools space only
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


class NonLocalBlock(nn.Module):
    """Non-local / self-attention block on (B, C, L), (B, C, H, W) or (B, C, T, H, W) for `dim` = 1, 2, 3;
    the identity at initialisation (unless `gamma_init` says otherwise).

    Every option is public API; those a GAN's 2D blocks can use are set by the config key in brackets
    (gan.models builds the blocks from `model.attn_*`; the choice lists are gan/choices.py's).
    - `channels`: C of the input; `dim`: 1 sequence, 2 image, 3 video (the GAN's blocks are 2D).
    - `pairwise`: f, one of PAIRWISE (module docstring) [model.attn_pairwise].
    - `qk_channels`, `v_channels`: widths of theta/phi and of g (default C/8, C/2; the Gaussian uses C)
      [C // model.attn_qk_divisor, C // model.attn_v_divisor].
    - `subsample`, `pool`: max-pool the keys and values; `pool` gives the kernel per axis (module docstring)
      [model.attn_subsample; `pool` is for 1D/3D use].
    - `gate="gamma"`: z = x + gamma * out(y), gamma a learnable scalar starting at `gamma_init` (0 in SAGAN;
      a non-zero start gives up the identity at initialisation) [model.attn_gate, model.attn_gamma_init].
      `gate="zero_init"`: z = x + out(y) with `out`'s weight starting at 0 (non-local paper). Spectral
      normalisation cannot represent a zero weight (it rescales by the largest singular value, 0/0 here),
      so under this gate `out` is left unnormalised; theta, phi and g still are.
      `gate="channel"`: z = x + tanh(a) * out(y), one gain per channel, a starting at 0, so each gain is
      bounded in (-1, 1) and moves on its own gradient (a scalar gamma sums the channels' gradients, which can
      cancel); `out` keeps its spectral norm. `gate_value()` reads how far any gate is open.
    - `spectral_norm`: normalise the 1x1 convolutions [model.g_spectral_norm / model.d_spectral_norm];
      `qk_spectral_norm` normalises theta/phi independently of g/out (None: follow `spectral_norm`)
      [model.attn_qk_spectral_norm].
    - `fused`: the fused path when no weights are needed (module docstring) [model.attn_fused].
    - `logit_scale`: one of LOGIT_SCALES, softmax variants only (module docstring) [model.attn_logit_scale].
    - `temperature`: t of pairwise="cosine" (None: `COSINE_TEMPERATURE`); the other functions take none
      [model.attn_temperature].
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
    ) -> None:
        super().__init__()
        if dim not in _AXES:
            raise ValueError(f"dim must be 1, 2 or 3 (sequence, image, video); got {dim!r}")
        per_axis = isinstance(pool, (tuple, list)) and len(pool) == dim and min(pool) >= 1
        if pool is not None and not (subsample and per_axis):
            raise ValueError(
                f"pool must be {dim} positive kernel sizes (one per axis of {_AXES[dim]}) with subsample=True; got {pool!r}"
            )
        if pairwise not in PAIRWISE:
            raise ValueError(f"pairwise must be one of {', '.join(PAIRWISE)}; got {pairwise!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}; got {gate!r}")
        if logit_scale not in LOGIT_SCALES:
            raise ValueError(f"logit_scale must be one of {', '.join(LOGIT_SCALES)}; got {logit_scale!r}")
        if logit_scale != "one" and pairwise not in _SOFTMAX:
            raise ValueError(
                f"logit_scale={logit_scale!r} scales softmax logits; pairwise={pairwise!r} has no softmax "
                "(its C(x) = N already normalises): use logit_scale='one'"
            )
        if gamma_init != 0.0 and gate != "gamma":
            raise ValueError(f"gamma_init={gamma_init} needs gate='gamma'; gate={gate!r} has no gamma")
        self.temperature = _check_own_scale(pairwise, logit_scale, temperature)
        self.channels = channels
        self.dim = dim
        self.pairwise = pairwise
        self.subsample = subsample
        self.pool = (tuple(int(k) for k in pool) if pool is not None else _SUBSAMPLE[dim]) if subsample else None
        self.gate = gate
        self.fused = fused
        self.logit_scale = logit_scale
        self.qk_channels = channels if pairwise == "gaussian" else (qk_channels or max(channels // 8, 1))
        self.v_channels = v_channels or max(channels // 2, 1)

        qk_sn = spectral_norm if qk_spectral_norm is None else qk_spectral_norm
        if pairwise != "gaussian":
            self.theta = _conv1x1(dim, channels, self.qk_channels, qk_sn)
        if pairwise not in ("gaussian", "l2"):  # l2 ties phi to theta
            self.phi = _conv1x1(dim, channels, self.qk_channels, qk_sn)
        if pairwise == "concatenation":
            self.w_f = nn.Parameter(torch.randn(2 * self.qk_channels) / math.sqrt(2 * self.qk_channels))
        self.g = _conv1x1(dim, channels, self.v_channels, spectral_norm)
        if gate == "gamma":
            self.out = _conv1x1(dim, self.v_channels, channels, spectral_norm)
            self.gamma = nn.Parameter(torch.full((), float(gamma_init)))
        elif gate == "channel":
            self.out = _conv1x1(dim, self.v_channels, channels, spectral_norm)
            self.gain = nn.Parameter(torch.zeros(channels))  # a in tanh(a), per channel
        else:
            self.out = _conv1x1(dim, self.v_channels, channels, False)
            nn.init.zeros_(self.out.weight)
        if logit_scale == "learned":  # registered only when chosen: older state dicts still load
            self.log_tau = nn.Parameter(torch.zeros(()))  # temperature exp(log_tau), starting at 1
        self._records: list[AttentionRecord] | None = None  # set by record_attention
        self._record_name = ""

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, dim={self.dim}, pairwise={self.pairwise}, qk={self.qk_channels}, v={self.v_channels}, "
            f"pool={self.pool}, gate={self.gate}, fused={self.fused}, logit_scale={self.logit_scale}"
            + (f", temperature={self.temperature}" if self.temperature is not None else "")
        )

    # -- pieces ---------------------------------------------------------------------------------

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """theta(x) as queries, phi(x) as keys, g(x) as values, positions flattened; and the key grid."""
        if self.pairwise == "gaussian":
            theta, phi = x, x
        else:
            theta = self.theta(x)  # (B, Cqk, *S)
            phi = theta if self.pairwise == "l2" else self.phi(x)  # (B, Cqk, *S)
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

    def _weights(self, q: Tensor, k: Tensor) -> Tensor:
        """Normalised weights f(x_i, x_j) / C(x): (B, Nq, N); softmax rows at least in float32."""
        n_keys = k.shape[1]
        if self.pairwise in _SOFTMAX:
            return torch.softmax(_at_least_float32(self.pairwise_logits(q, k)), dim=-1)
        if self.pairwise == "dot_product":
            return torch.bmm(q, k.transpose(1, 2)) / n_keys  # (B, Nq, N)
        # concatenation: w_f^T [theta_i; phi_j] = w_theta . theta_i + w_phi . phi_j, never building the pairs
        w_theta, w_phi = self.w_f.to(q.dtype).split(self.qk_channels)
        f = F.relu((q @ w_theta).unsqueeze(2) + (k @ w_phi).unsqueeze(1))  # (B, Nq, N)
        return f / n_keys

    def pairwise_logits(self, q: Tensor, k: Tensor) -> Tensor:
        """The softmax variants' logits, as the block scales them: (B, Nq, N)."""
        if self.pairwise in _OWN_SCALE:
            return _own_scale_logits(self.pairwise, q, k, self.temperature)
        logits = torch.bmm(q, k.transpose(1, 2))  # (B, Nq, N)
        return logits * self._constant_scale() if self.logit_scale == "inv_sqrt_d" else logits

    def _constant_scale(self) -> float:
        """The fixed factor on the logits: 1/sqrt(d_qk) under "inv_sqrt_d", else 1 (the learned one is in q)."""
        return 1.0 / math.sqrt(self.qk_channels) if self.logit_scale == "inv_sqrt_d" else 1.0

    def _fused_attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """softmax(s q k^T) v without the (Nq x N) matrix: (B, Nq, Cv)."""
        scale = self._constant_scale()
        if self.pairwise in _OWN_SCALE:
            q, k, scale = _own_scale_fused_inputs(self.pairwise, q, k, self.temperature)
        pad, cv = v.shape[-1] - q.shape[-1], v.shape[-1]
        if pad != 0 and (q.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16)):
            # Flash kernels want equal head sizes; zero columns leave every q.k unchanged, and zero value
            # columns (when q is the wider, as l2's extra channel can make it) give zero outputs, cut below.
            q, k = (F.pad(q, (0, pad)), F.pad(k, (0, pad))) if pad > 0 else (q, k)  # (B, Nq, C), (B, N, C)
            v = F.pad(v, (0, -pad)) if pad < 0 else v  # (B, N, C)
        y = F.scaled_dot_product_attention(
            q.unsqueeze(1).contiguous(),  # (B, 1, Nq, C)
            k.unsqueeze(1).contiguous(),  # (B, 1, N, C)
            v.unsqueeze(1).contiguous(),  # (B, 1, N, Cv); a non-contiguous last dim sends SDPA to its math path
            scale=scale,  # explicit: padding q/k must not change SDPA's 1/sqrt(width)
        )
        return y.squeeze(1)[..., :cv]  # (B, Nq, Cv)

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != self.dim + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"NonLocalBlock({self.channels}) with dim={self.dim} expects (B, {self.channels}, {_AXES[self.dim]}); "
                f"got {tuple(x.shape)} (dim=1: sequences, 2: images, 3: videos)"
            )
        grid = tuple(x.shape[2:])  # S: (L,), (H, W) or (T, H, W)
        q, k, v, key_grid = self._project(x)
        need_weights = return_attention or self._records is not None
        if need_weights or not (self.fused and self.pairwise in _SOFTMAX):
            attn = self._weights(q, k)  # (B, Nq, N)
            y = torch.bmm(attn.to(v.dtype), v)  # (B, Nq, Cv)
        else:
            attn = None
            y = self._fused_attend(q, k, v)  # (B, Nq, Cv)
        y = y.transpose(1, 2).reshape(x.shape[0], self.v_channels, *grid)  # (B, Cv, *S)
        o = self.out(y)  # (B, C, *S)
        if self.gate == "gamma":
            z = x + self.gamma.to(o.dtype) * o
        elif self.gate == "channel":
            z = x + self.gain.tanh().to(o.dtype).view(-1, *[1] * self.dim) * o  # (C, 1, ...) over (B, C, *S)
        else:
            z = x + o
        if self._records is not None:
            self._records.append(AttentionRecord(self._record_name, attn.detach().float(), grid, key_grid))
        return (z, attn) if return_attention else z

    def gate_value(self) -> float:
        """How far the residual gate is open, the one place it is read: gamma itself (signed), the Frobenius
        norm of `out`'s weight ("zero_init") or the root mean square of the gains tanh(a) ("channel"); at 0 the
        block is the identity."""
        opening = self.gate_parameter().detach()
        if self.gate == "channel":
            return float(opening.tanh().pow(2).mean().sqrt())
        return float(opening) if opening.dim() == 0 else float(opening.norm())

    def gate_parameter(self) -> nn.Parameter:
        """The parameter whose zero makes the block the identity: gamma, the gains' a, or `out`'s weight."""
        if self.gate == "gamma":
            return self.gamma
        return self.gain if self.gate == "channel" else self.out.weight


# ----------------------------------------------------------------------------------------------
# The l2 and cosine pairwise functions (their logits carry their own scale)


def _check_own_scale(pairwise: str, logit_scale: str, temperature: float | None) -> float | None:
    """The cosine temperature t (None for every other function); ValueError for options that do not fit."""
    if pairwise in _OWN_SCALE and logit_scale != "one":
        raise ValueError(
            f"pairwise={pairwise!r} fixes its logits' scale (l2: 1/sqrt(d), cosine: the temperature); use logit_scale='one'"
        )
    if pairwise != "cosine":
        if temperature is not None:
            raise ValueError(f"temperature sets pairwise='cosine'; pairwise={pairwise!r} takes none")
        return None
    t = COSINE_TEMPERATURE if temperature is None else float(temperature)
    if not t > 0:
        raise ValueError(f"temperature must be positive (cosine logits are t cos, in [-t, t]); got {temperature!r}")
    return t


def _own_scale_logits(pairwise: str, q: Tensor, k: Tensor, temperature: float | None) -> Tensor:
    """(B, Nq, N) logits: l2 -||q_i - k_j||^2 / sqrt(d), expanded as (2 q.k - |q|^2 - |k|^2) / sqrt(d) (the
    gradient of a distance's square root is undefined where q_i = k_j, as tied keys make common);
    cosine t q_i.k_j / (|q_i| |k_j|), a zero vector's cosine 0."""
    if pairwise == "cosine":
        return temperature * torch.bmm(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(1, 2))
    qk = torch.bmm(q, k.transpose(1, 2))  # (B, Nq, N)
    sq_q, sq_k = q.pow(2).sum(-1, keepdim=True), k.pow(2).sum(-1).unsqueeze(1)  # (B, Nq, 1), (B, 1, N)
    return (2.0 * qk - sq_q - sq_k) / math.sqrt(q.shape[-1])


def _own_scale_fused_inputs(
    pairwise: str, q: Tensor, k: Tensor, temperature: float | None
) -> tuple[Tensor, Tensor, float]:
    """Queries, keys and scale s for SDPA's softmax(s q' k'^T) that give the same weights as the logits above.

    cosine: unit q and k, s = t. l2: -|q_i|^2 is the same for every key j, so it cancels in the softmax over
    j; what is left, (2 q.k - |k|^2) / sqrt(d), is s q'.k' with q' = [q, 1], k' = [k, -|k|^2 / 2] and
    s = 2 / sqrt(d): one more channel, no additive mask (whose gradient the fused kernels do not give).
    """
    if pairwise == "cosine":
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), temperature
    d = q.shape[-1]
    q1 = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)  # (B, Nq, d + 1)
    k1 = torch.cat([k, -0.5 * k.pow(2).sum(-1, keepdim=True)], dim=-1)  # (B, N, d + 1)
    return q1, k1, 2.0 / math.sqrt(d)


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
