"""The optax chain built from `config.optim`: clipping, AdamW with a decay mask, warmup + cosine."""

import jax
import optax


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr, then cosine down to min_lr_ratio * lr at total_steps (or
    flat)."""
    warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
    if optim_cfg.schedule == 'constant':
        return optax.join_schedules(
            [optax.linear_schedule(0.0, optim_cfg.lr, max(warmup, 1)),
             optax.constant_schedule(optim_cfg.lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim_cfg.lr * optim_cfg.min_lr_ratio)


DECAYED_SUFFIXES = ('kernel', 'embedding', 'embed')


def decay_mask(params):
    """Weight decay on weight matrices and embedding tables, never on biases or norm scales: on
    parameters whose own name ends in `kernel` (nn.Dense, nn.Conv, `query_kernel`, ...),
    `embedding` (nn.Embed) or `embed` (a table made with self.param, e.g. `pos_embed`).

    Decided by name, not by ndim: under nn.scan a LayerNorm scale has a leading layers axis and
    would look like a matrix, and a per-head bias (heads, kv) is 2-D.
    """
    def is_decayed(path, _):
        last = path[-1]
        return str(getattr(last, 'key', getattr(last, 'name', ''))).endswith(DECAYED_SUFFIXES)
    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
    """(the optax chain, its learning-rate schedule) from `config.optim`: global-norm clipping
    (if clip_norm > 0), then AdamW with `decay_mask`, over `total_steps` steps."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    parts = []
    if optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                             weight_decay=optim_cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule
