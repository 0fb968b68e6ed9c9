"""The names that config keys accept and other modules implement, written once and without torch.

`gan.config` offers them as the choices of its keys and checks configs against them before any torch code
runs; the modules that implement them check their arguments against the same tuples. Datasets and metrics
are gan/registry.py's (name -> entry), for the same reason kept free of torch.
"""

from __future__ import annotations

# gan/attention.py's NonLocalBlock: pairwise function f, and which of them normalise by a softmax
PAIRWISE = ("embedded_gaussian", "dot_product", "concatenation", "gaussian", "l2", "cosine")
SOFTMAX_PAIRWISE = ("embedded_gaussian", "gaussian", "l2", "cosine")
GATES = (
    "gamma",
    "zero_init",
    "channel",
)  # residual gate: learnable gamma, zero-initialised out conv, per-channel gains
LOGIT_SCALES = ("one", "inv_sqrt_d", "learned")  # the factor on the softmax logits
