"""The optax chain built from `config.optim`: clipping, AdamW (or LARS) with a decay mask, warmup
then a cosine, constant or warmup-stable-decay learning rate."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dul_jax.config import check, check_schedule, wsd_decay_steps


def decay_shape(name: str, peak: float, end: float, steps: int) -> optax.Schedule:
    """From `peak` at count 0 to `end` at count `steps` (and after): end + (peak - end) *
    shape(count / steps), with shape(p) = 1 - p ('linear'), (1 + cos(pi p)) / 2 ('cosine') or
    1 - sqrt(p) ('1-sqrt'). The 1-sqrt cooldown is Hägele et al. 2024 (arXiv 2405.18392):
    lr * (1 - sqrt((n - (N - N_decay)) / N_decay)); their code (epfml/schedules-and-scaling,
    src/optim/utils.py: wsd_schedule, decay_type='sqrt') adds a floor as here, as a fraction of
    lr: final + (1 - final) * (1 - sqrt(p)), with final = min_lr_ratio."""
    if name == 'linear':
        return optax.linear_schedule(peak, end, steps)
    if name == 'cosine':
        return optax.cosine_decay_schedule(peak, steps, alpha=end / peak)

    def one_minus_sqrt(count):
        progress = jnp.clip(count / steps, 0.0, 1.0)
        return end + (peak - end) * (1.0 - jnp.sqrt(progress))
    return one_minus_sqrt


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr over warmup_steps, then by optim.schedule:

    'cosine': cosine down to min_lr_ratio * lr at total_steps (warmup clipped to fit);
    'constant': lr;
    'wsd' (warmup-stable-decay): lr until total_steps - D, then `decay_shape` down to
      min_lr_ratio * lr at total_steps (the count after the last update, as for 'cosine'), where
      D = `wsd_decay_steps` (decay_steps, or decay_fraction * total_steps). D = 0 never decays.
      The decay depends only on the step's distance from total_steps - D, so a run of k + d
      steps with decay_steps=d is a cooldown branch at step k of a stable-phase run.

    UserError (before anything compiles) for settings that cannot fit total_steps.
    """
    check_schedule(optim_cfg, total_steps)
    lr = optim_cfg.lr
    if optim_cfg.schedule == 'wsd':
        warmup, decay = optim_cfg.warmup_steps, wsd_decay_steps(optim_cfg, total_steps)
        parts = [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)]
        boundaries = [warmup]
        if decay:
            parts.append(decay_shape(optim_cfg.get('decay_shape', '1-sqrt'), lr,
                                     lr * optim_cfg.min_lr_ratio, decay))
            boundaries.append(total_steps - decay)
        return optax.join_schedules(parts, boundaries)
    warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
    if optim_cfg.schedule == 'constant':
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)),
             optax.constant_schedule(lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=lr * optim_cfg.min_lr_ratio)


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
    (if clip_norm > 0), then AdamW (or LARS) with `decay_mask`, over `total_steps` steps."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    parts = []
    if optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
    if optim_cfg.get('optimizer', 'adamw') == 'lars':
        # SGD with momentum b1 and a per-layer trust ratio (You et al. 2017); as in SimCLR and
        # BYOL, biases and norm scales get neither the trust ratio nor weight decay
        parts.append(optax.lars(schedule, weight_decay=optim_cfg.weight_decay,
                                weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                                momentum=optim_cfg.b1))
    else:
        parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                                 weight_decay=optim_cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


def group_settings(optim_cfg, group: str):
    """`optim_cfg` with the overrides of optim.groups.GROUP: one player's optimizer settings
    (e.g. a GAN's two time-scale learning rates)."""
    settings = {k: v for k, v in optim_cfg.items() if k != 'groups'}
    settings.update(optim_cfg.get('groups', {}).get(group, {}))
    return ml_collections.ConfigDict(settings)


def check_groups(optim_cfg, groups: tuple[str, ...]) -> None:
    """UserError for optim.groups that name no player or no optim setting."""
    for group, overrides in optim_cfg.get('groups', {}).items():
        check(group in groups, f'optim.groups.{group} names no parameter group of this task; '
              f'its groups are {", ".join(groups) or "none (one optimizer)"}.')
        for key in overrides:
            check(key in optim_cfg and key != 'groups', f'optim.groups.{group}.{key} is not an '
                  'optim setting; override only keys of optim (lr, b1, b2, ...).')
        lr = group_settings(optim_cfg, group).lr
        check(lr > 0, f'optim.groups.{group}.lr must be positive, got {lr}.')


def make_group_optimizers(optim_cfg, total_steps: int, groups: tuple[str, ...]):
    """({group: optax chain}, {group: schedule}), each from `group_settings`."""
    built = {g: make_optimizer(group_settings(optim_cfg, g), total_steps) for g in groups}
    return {g: b[0] for g, b in built.items()}, {g: b[1] for g, b in built.items()}
