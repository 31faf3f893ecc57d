"""The train state pytree and the pure, jit-able train and eval steps."""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step updates and a checkpoint holds; a pytree (flax struct)."""
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any            # float32
    opt_state: Any
    ema_params: Any        # None unless optim.ema_decay > 0
    rng: jax.Array         # raw uint32 key data (checkpoints hold plain arrays); see step_rng


def step_rng(state: TrainState) -> jax.Array:
    """A fresh key per step, derived from the run's key and the step: resumes reproduce it."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def create_state(params, tx: optax.GradientTransformation, rng_seed_key: jax.Array,
                 ema_decay: float) -> TrainState:
    """The state at step 0: `params`, tx's initial optimizer state, an EMA copy of the params if
    ema_decay > 0, and the raw data of `rng_seed_key` (a typed key) as the run's key."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params if ema_decay > 0 else None,
                      rng=jax.random.key_data(rng_seed_key))


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


def make_train_step(task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_decay: float, axis_name: str | None = None, grad_accum: int = 1):
    """One optimizer step. With `axis_name` (the pmap path), gradients and metrics are averaged
    over that axis; under jit with shardings XLA inserts the same reductions itself.
    `grad_accum` > 1 computes the gradient in that many microbatches (the same update)."""

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = step_rng(state)
        if axis_name is not None:  # pmap: each device its own dropout noise for its sub-batch
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        loss_fn = task.loss
        if task.loss_takes_step:   # schedules inside the loss (KL warm-up), from the state's step
            loss_fn = functools.partial(task.loss, step=state.step)
        (_, metrics), grads = accumulated_grads(loss_fn, state.params, batch, rng, grad_accum)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema)
        return new_state, metrics

    return train_step


def eval_params(state: TrainState):
    """EMA params where the run keeps them (they sample and evaluate better), else the params."""
    return state.ema_params if state.ema_params is not None else state.params


def eval_key(seed: int, batch_index: int) -> jax.Array:
    """The key of eval batch `batch_index`: the same at every eval, so evals at different steps
    (and `Run.evaluate` on the first batch) compare."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x5EED), batch_index)


def make_eval_step(task):
    """Mask-weighted sums of the task's per-example metrics, plus the example count."""

    def eval_step(params, batch, rng) -> dict[str, jax.Array]:
        per_example = task.eval_metrics(params, batch, rng)
        mask = batch['mask'].astype(jnp.float32)
        sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
        sums['count'] = jnp.sum(mask)
        return sums

    return eval_step
