"""The train state pytree and the pure, jit-able train and eval steps."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from dul_jax.config import check
from dul_jax.tasks.base import DTYPES, StepContext
from dul_jax.train.optim import decay_mask


@flax.struct.dataclass
class TrainState:
    """Everything a step updates and a checkpoint holds; a pytree (flax struct)."""
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any            # float32, or matrices in bfloat16 (model.param_dtype, cast_params)
    opt_state: Any
    ema_params: Any        # None unless optim.ema_decay > 0; the task's ema_groups only
    rng: jax.Array         # raw uint32 key data (checkpoints hold plain arrays); see step_rng
    # Variables the forward pass updates, not the optimizer (spectral norm's power-iteration
    # vectors); None unless the task implements init_model_state.
    model_state: Any = None


def step_rng(state: TrainState) -> jax.Array:
    """A fresh key per step, derived from the run's key and the step: resumes reproduce it."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def averaged(params, groups: tuple[str, ...] | None):
    """The params an EMA follows: all of them (groups None), or those top-level groups."""
    return params if groups is None else {g: params[g] for g in groups}


def param_dtype(cfg):
    """model.param_dtype (float32 where the model config has no such key); UserError otherwise."""
    name = cfg.model.get('param_dtype', 'float32')
    check(name in DTYPES, f'model.param_dtype must be one of {", ".join(DTYPES)}, got "{name}".')
    return DTYPES[name]


def cast_params(params, dtype):
    """`params` (boxed or not) with the weight matrices and embedding tables in `dtype`; optax
    then keeps their Adam moments in it too. Chosen by name, as for weight decay (`decay_mask`):
    under nn.scan a LayerNorm scale is 2-D as well. Vectors stay float32: bf16 rounding swamps
    small updates to those few, sensitive params, and the matrices are what fills memory."""
    def cast(leaf, is_matrix):
        if not is_matrix:
            return leaf
        if isinstance(leaf, nn.meta.AxisMetadata):   # keep the logical-partitioning box
            return leaf.replace_boxed(leaf.unbox().astype(dtype))
        return leaf.astype(dtype)
    return jax.tree.map(cast, params, decay_mask(nn.meta.unbox(params)),
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def create_state(params, tx, rng_seed_key: jax.Array, ema_decay: float,
                 model_state=None, ema_groups: tuple[str, ...] | None = None) -> TrainState:
    """The state at step 0: `params`, the initial optimizer state (of each group's transform
    where `tx` is a dict of them), an EMA copy of the params (or of the `ema_groups`) if
    ema_decay > 0, the raw data of `rng_seed_key` (a typed key) as the run's key, and
    `model_state`. The EMA is float32 whatever the params' dtype: a decay near 1 moves it by less
    than bf16 resolves."""
    opt_state = {g: t.init(params[g]) for g, t in tx.items()} if isinstance(tx, dict) \
        else tx.init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema_params=cast_params(averaged(params, ema_groups), jnp.float32)
                      if ema_decay > 0 else None,
                      rng=jax.random.key_data(rng_seed_key), model_state=model_state)


def microbatches(batch, count: int):
    """(B, ...) leaves -> (count, B / count, ...): microbatch i holds rows i, i + count, ...,
    so each device's contiguous block of the batch splits into its own share of every
    microbatch and accumulation moves no data between devices."""
    return jax.tree.map(lambda x: jnp.swapaxes(
        x.reshape((x.shape[0] // count, count) + x.shape[1:]), 0, 1), batch)


def accumulated_grads(loss_fn, params, batch, rng, count: int):
    """((loss, metrics), grads) of `loss_fn(params, batch, rng)`, the mean over `count` equal
    microbatches computed one after another (a scan): the gradient of the whole batch's mean
    loss, with the activation memory of one microbatch."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        return grad_fn(params, batch, rng)

    def one(carry, i_and_batch):
        i, micro = i_and_batch
        out = grad_fn(params, micro, jax.random.fold_in(rng, i))
        return jax.tree.map(lambda total, x: total + x / count, carry, out), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], microbatches(batch, count)), rng))
    total, _ = jax.lax.scan(one, zeros, (jnp.arange(count), microbatches(batch, count)))
    return total


def make_update(task, tx, grad_accum: int = 1):
    """`update(state, batch, rng, group)`: one optimizer update of `group`'s params (None: all of
    them, with `tx`; a group: with `tx[group]`), through the one loss contract of every family
    (`task.loss(params, batch, rng, StepContext) -> LossOut`). Under jit with shardings XLA
    inserts the reductions over the batch shards itself (sharding/pmap.py adds them to the loss
    for its per-device step). `grad_accum` > 1 computes each gradient in that many microbatches
    (the same update)."""

    def update(state: TrainState, batch, rng, group: str | None):
        def loss_fn(params, batch, rng):
            full = params if group is None else {**state.params, group: params}
            out = task.loss(full, batch, rng, StepContext(state.step, state.model_state, group))
            return out.loss, (out.metrics, out.model_state)

        params = state.params if group is None else state.params[group]
        opt_state, transform = (state.opt_state, tx) if group is None else \
            (state.opt_state[group], tx[group])
        # microbatches average the new model state too: spectral norm's power iteration depends
        # on the weights alone, so every microbatch's is the same
        (_, (metrics, model_state)), grads = accumulated_grads(loss_fn, params, batch, rng,
                                                               grad_accum)
        updates, opt_state = transform.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if group is not None:
            params = {**state.params, group: params}
            opt_state = {**state.opt_state, group: opt_state}
        model_state = task.after_update(params, model_state, state.step)
        params = task.assign_params(params, model_state)
        state = state.replace(params=params, opt_state=opt_state, model_state=model_state)
        return state, dict(metrics, grad_norm=optax.global_norm(grads))

    return update


def make_train_step(task, tx, schedule, ema_decay: float, grad_accum: int = 1):
    """One training step: the update of `make_update` (or, for a family that declares players,
    each player's turn: train/players.py), then the EMA and the step count."""
    update = make_update(task, tx, grad_accum)
    if task.phases():
        from dul_jax.train import players
        advance = players.take_turns(update, task.phases(), schedule)
    else:
        def advance(state, batch, rng):
            new_state, metrics = update(state, batch, rng, None)
            return new_state, dict(metrics, lr=schedule(state.step))
    ema_groups = task.ema_groups()

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        new_state, metrics = advance(state, batch, step_rng(state))
        ema = new_state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema,
                               averaged(new_state.params, ema_groups))
        return new_state.replace(step=state.step + 1, ema_params=ema), metrics

    return train_step


def eval_params(state: TrainState):
    """EMA params where the run keeps them (they sample and evaluate better), else the params;
    where the EMA follows some groups only (a GAN's generator), the others as they are."""
    return with_ema(state.params, state.ema_params)


def with_ema(params, ema):
    """`params` with the groups `ema` holds replaced by it (all of them, or some)."""
    return params if ema is None else {**params, **ema}


def eval_key(seed: int) -> jax.Array:
    """The key of the eval: batch i's is `fold_in(eval_key(seed), i)`, the same at every eval,
    so evals at different steps (and `Run.evaluate` on the first batch) compare."""
    return jax.random.fold_in(jax.random.key(seed), 0x5EED)
