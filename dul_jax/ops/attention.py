"""Softmax attention on (B, T, H, D) queries, keys and values.

impls: `reference` is XLA's `jax.nn.dot_product_attention`; `blocked` is causal attention in
query blocks with a hand-written backward pass (fastest on XLA:CPU); `cudnn` is cuDNN's fused
(flash) attention, 16-bit inputs on NVIDIA GPUs only; `splash` is jax's Pallas splash
attention kernel, TPUs only (lengths a multiple of 128). Measurements: benchmarks/README.md,
"Kernels (dul_jax/ops/)". `auto` stays `reference` on TPUs: splash's speed is not measured yet.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from dul_jax.errors import UserError
from dul_jax.ops import choice

IMPLS = ('auto', 'reference', 'blocked', 'cudnn', 'splash')
CAUSAL_BLOCK = 128


def resolve(impl: str, dtype, length: int, backend: str | None = None) -> str:
    """The implementation `impl` names for these inputs: `auto` -> cudnn on a GPU for 16-bit
    inputs whose length is a multiple of 64 (cuDNN refuses some others, e.g. MAE's 13 visible
    tokens), else blocked on CPU and GPU, reference on other backends (TPU)."""
    backend = backend or choice.current_backend()
    if backend == 'gpu' and impl == 'auto':
        sixteen_bit = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        return 'cudnn' if sixteen_bit and length % 64 == 0 else 'blocked'
    return choice.resolve('attention', IMPLS, {'cpu': 'blocked', None: 'reference'}, impl,
                          backend)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool,
              impl: str = 'auto') -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head, (B, T, H, D) in and out."""
    impl = resolve(impl, q.dtype, q.shape[1])
    if impl == 'blocked':
        return blocked(q, k, v, causal)
    if impl == 'cudnn':
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation='cudnn')
    if impl == 'splash':
        return splash(q, k, v, causal)
    return reference(q, k, v, causal)


def reference(q, k, v, causal):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal)


SPLASH_BLOCKS = (512, 256, 128)   # the kernel's blocks are multiples of 128 lanes
LAYOUT = ('batch', 'length', 'heads', 'kv')   # the logical axes of q, k, v (models/transformer.py)


def splash(q, k, v, causal, interpret=False):
    """Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) on (B, T, H, D), for
    lengths T that are a multiple of 128. Under a mesh it runs per device in a shard_map (XLA
    cannot partition a Pallas call) with the specs the logical axis rules give LAYOUT.
    `interpret=True` runs the kernel in Pallas's interpreter, on any backend (for tests)."""
    length = q.shape[1]
    if not interpret and choice.current_backend() != 'tpu':
        raise UserError(f'attention impl splash runs on TPUs only, not on '
                         f'{choice.current_backend()}; use another ops.attention.')
    if length % SPLASH_BLOCKS[-1]:
        raise UserError(f'attention impl splash needs a length that is a multiple of '
                         f'{SPLASH_BLOCKS[-1]}, got {length}.')
    local = functools.partial(_splash_per_device, causal=causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v)
    spec = PartitionSpec(*nn.logical_to_mesh_axes(LAYOUT))
    if spec[1] is not None or spec[3] is not None:   # each device needs whole rows of scores
        raise UserError(f'attention impl splash cannot split the length or depth axes of '
                         f'(batch, length, heads, kv) over the mesh, got {spec}.')
    # check_vma=False: the kernel's output shapes do not say how they vary over the mesh
    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                         check_vma=False)(q, k, v)


def _splash_per_device(q, k, v, causal, interpret):
    """The kernel on one device's (B, T, H, D) block: it takes (H, T, D), so vmap over B."""
    # imported here: Pallas's TPU modules are only needed by runs that ask for this kernel
    from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
    _, length, heads, depth = q.shape
    block = next(b for b in SPLASH_BLOCKS if length % b == 0)
    head_mask = (splash_lib.CausalMask((length, length)) if causal
                 else splash_lib.FullMask((length, length)))
    sizes = splash_lib.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash_lib.make_splash_mha(
        splash_lib.MultiHeadMask([head_mask] * heads), block_sizes=sizes, head_shards=1,
        q_seq_shards=1, interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)   # (B, T, H, D) <-> (B, H, T, D)
    q = q * jnp.asarray(depth ** -0.5, q.dtype)
    out = jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v))
    return heads_first(out).astype(q.dtype)


def _query_blocks(length: int, causal: bool) -> list[tuple[int, int, int]]:
    """(start, stop, keys) per query block: causal attention in blocks of CAUSAL_BLOCK queries that
    read only the `keys` first keys (the masked upper triangle is skipped), else one block."""
    count = length // CAUSAL_BLOCK if causal and length % CAUSAL_BLOCK == 0 else 1
    size = length // count
    return [(i * size, (i + 1) * size, (i + 1) * size if causal else length) for i in range(count)]


def _heads_by_depth(x: jax.Array) -> jax.Array:
    """(B, T, H, D) -> (B, H, D, T)."""
    return jnp.transpose(x, (0, 2, 3, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Attention in query blocks (see `_query_blocks`) with a hand-written backward pass.

    Products accumulate and the softmax runs in float32 whatever the input dtype; each result is
    rounded to it once. The exponentials stay unnormalised (the (T, D) output is divided, not the
    (T, T) weights), the backward takes the softmax's row term as rowsum(dO * O), and 4 of the 6
    products have their left operand contracting over its major dimension, XLA:CPU's fast Eigen
    case. Reverse-mode only (custom_vjp: no jax.jvp / jacfwd).
    """
    return _blocked_fwd(q, k, v, causal)[0]


def _blocked_fwd(q, k, v, causal):
    length, depth = q.shape[1], q.shape[-1]
    qt = _heads_by_depth(q * jnp.asarray(depth ** -0.5, q.dtype))   # scaled Q^T (B, H, D, T)
    kt = _heads_by_depth(k)
    vh = jnp.swapaxes(v, 1, 2)                                         # (B, H, T, D)
    outputs, weights, inverse_sums = [], [], []
    for start, stop, keys in _query_blocks(length, causal):
        scores = jnp.einsum('bhdq,bhdk->bhqk', qt[..., start:stop], kt[..., :keys],
                            preferred_element_type=jnp.float32)
        if causal:
            visible = jnp.arange(keys)[None, :] <= jnp.arange(start, stop)[:, None]
            scores = jnp.where(visible, scores, -jnp.inf)
        e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        inverse_sum = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
        e = e.astype(v.dtype)
        outputs.append((jnp.matmul(e, vh[:, :, :keys], preferred_element_type=jnp.float32)
                        * inverse_sum).astype(v.dtype))
        weights.append(e)
        inverse_sums.append(inverse_sum)
    out = jnp.concatenate(outputs, axis=2) if len(outputs) > 1 else outputs[0]
    return jnp.swapaxes(out, 1, 2), (qt, kt, vh, out, weights, inverse_sums)


def _blocked_bwd(causal, residuals, g):
    qt, kt, vh, out, weights, inverse_sums = residuals
    length, depth = qt.shape[-1], qt.shape[-2]
    g_heads = jnp.swapaxes(g, 1, 2)                                   # dO (B, H, T, D)
    g_t = _heads_by_depth(g)                                           # dO^T (B, H, D, T)
    vt, qh, kh = jnp.swapaxes(vh, 2, 3), jnp.swapaxes(qt, 2, 3), jnp.swapaxes(kt, 2, 3)
    # rowsum(dP * P) = rowsum(dO * O), since dP = dO V^T and O = P V
    row_term = jnp.sum(g_heads.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    dq_blocks, dk_t, dv_t = [], 0, 0
    for (start, stop, keys), e, inverse_sum in zip(_query_blocks(length, causal), weights,
                                                     inverse_sums):
        g_scaled = (g_heads[:, :, start:stop] * inverse_sum).astype(g.dtype)
        dv_block = jnp.einsum('bhqd,bhqk->bhdk', g_scaled, e,           # dV^T for keys [0, keys)
                              preferred_element_type=jnp.float32)
        dp = jnp.einsum('bhdq,bhdk->bhqk', g_t[..., start:stop], vt[..., :keys],
                        preferred_element_type=jnp.float32)
        ds = e * (dp - row_term[:, :, start:stop]) * inverse_sum
        ds = ds.astype(qt.dtype)
        dq_blocks.append(jnp.matmul(ds, kh[:, :, :keys], preferred_element_type=jnp.float32))
        dk_block = jnp.einsum('bhqd,bhqk->bhdk', qh[:, :, start:stop], ds,  # dK^T (scaled q)
                              preferred_element_type=jnp.float32)
        padding = [(0, 0)] * 3 + [(0, length - keys)]
        dv_t = dv_t + jnp.pad(dv_block, padding)
        dk_t = dk_t + jnp.pad(dk_block, padding)
    dq = jnp.concatenate(dq_blocks, axis=2) if len(dq_blocks) > 1 else dq_blocks[0]
    dq = dq * depth ** -0.5
    from_heads_by_depth = (0, 3, 1, 2)
    return (jnp.swapaxes(dq, 1, 2).astype(qt.dtype),
            jnp.transpose(dk_t, from_heads_by_depth).astype(kt.dtype),
            jnp.transpose(dv_t, from_heads_by_depth).astype(vh.dtype))


blocked.defvjp(_blocked_fwd, _blocked_bwd)
