"""Parameter counts and training FLOPs, analytic and from XLA.

Analytic Transformer count (Kaplan et al. 2020, Sec. 2.1, with the output head included because it
is a matmul): per token, a forward pass costs 2 * N_matmul multiply-adds-as-FLOPs for the weight
matmuls plus 2 * L * T * d for attention scores and weighted values (QK^T and AV, each T * d per
token per layer, full T x T counted even though causal masking could skip half); training is 3x
the forward pass (backward = 2x forward):
    FLOPs/token = 6 * N_matmul + 12 * L * T * d.
N_matmul excludes the token and position embedding tables (lookups, not matmuls).
"""

import jax
import numpy as np


def count_params(params, under: tuple[str, ...] | None = None) -> int:
    """Parameters in the tree, or only those whose path names one of `under` (e.g. a task's
    `embedding_names`: lookup tables, not matmul weights)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if under is None or {getattr(k, 'key', None) for k in path} & set(under):
            total += int(np.prod(leaf.shape))
    return total


def transformer_flops_per_token(matmul_params: int, num_layers: int, context: int,
                                embed_dim: int) -> float:
    """Training FLOPs per token: 6 N_matmul + 12 L T d (see the module docstring)."""
    return 6.0 * matmul_params + 12.0 * num_layers * context * embed_dim


def xla_cost(compiled) -> dict:
    """XLA's cost analysis of a lowered or compiled computation ({} where it gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX returned one dict per computation
        analysis = analysis[0] if analysis else {}
    return analysis or {}


def xla_flops(compiled) -> float:
    """FLOPs of a compiled computation by XLA's cost analysis (0.0 where it reports none)."""
    return float(xla_cost(compiled).get('flops', 0.0))
