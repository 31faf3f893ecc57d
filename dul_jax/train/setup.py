"""Everything a run needs before its first step, validated in order from cheap to expensive.

`prepare(cfg)` checks the config, the data set, the model and the mesh (raising UserError with one
sentence on the first problem), and returns a Setup holding the task, the mesh, the optimizer and
the shardings of the train state and batch. Nothing has been compiled when it returns.
"""

import contextlib
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dul_jax import data, evaluators
from dul_jax.config import check, validate_common
from dul_jax.sharding import mesh as mesh_lib
from dul_jax.sharding import pmap as pmap_lib
from dul_jax.tasks import make_task
from dul_jax.tasks.capabilities import ModelState
from dul_jax.train import mup
from dul_jax.train.evaluation import Evaluation, masked_sums
from dul_jax.train.optim import check_groups, make_group_optimizers, make_optimizer
from dul_jax.train.state import (
    TrainState,
    cast_params,
    create_state,
    make_train_step,
    param_dtype,
)


@dataclasses.dataclass(frozen=True)
class Setup:
    """A validated run: config, data spec, task, mesh and axis rules, optimizer and schedule, and
    the shardings of the train state and batch; built by `prepare`, which compiles nothing."""
    cfg: Any
    spec: data.DataSpec
    task: Any
    mesh: jax.sharding.Mesh
    rules: tuple
    tx: Any
    schedule: Any
    state_shardings: Any      # TrainState of NamedShardings
    logical_specs: Any        # TrainState of logical PartitionSpecs
    batch_sharding: jax.sharding.NamedSharding
    eager: bool = False       # --debug: steps run without jit, so sharding constraints are off
    # how the one train step runs: the jit or the pmap path (sharding/pmap.py)
    parallel: Any = dataclasses.field(default_factory=pmap_lib.Partitioned)
    mup_roles: dict | None = None   # µP's role of each parameter (train/mup.py); None: off

    def context(self):
        """Mesh and axis rules in scope while tracing, so the models' logical constraints apply.

        Eager (debug) runs leave the mesh out: a constraint outside jit cannot apply to the
        single-device intermediates of eager ops, and there is nothing to partition anyway.
        """
        stack = contextlib.ExitStack()
        if not self.eager:
            stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    @property
    def process_batch_size(self) -> int:
        """This process's rows of each global train batch: train.batch_size / processes."""
        return self.cfg.train.batch_size // jax.process_count()

    def dummy_batch(self, size: int = 1) -> dict:
        """Zeros shaped like `size` examples of the data set (host numpy arrays)."""
        return dummy_batch(self.spec, size)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and target shardings of the state: what restore needs."""
        shapes = jax.eval_shape(self._init_unboxed, jax.random.key(0))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_shardings)

    def _init_unboxed(self, rng) -> TrainState:
        return nn.meta.unbox(_init_boxed(self.task, self.tx, self.cfg, self.mup_roles, rng))

    def init_state(self, seed: int) -> TrainState:
        """Initialise directly into the target shardings: no full replica on any one device."""
        with self.context():
            init = jax.jit(self._init_unboxed, out_shardings=self.state_shardings)
            return init(jax.random.key(seed))

    def data_init(self, state: TrainState, host_batch: dict) -> TrainState:
        """The fresh state with the task's data-dependent init (Task.data_init) from a batch."""
        rng = jax.random.fold_in(jax.random.key(self.cfg.seed), 0xDA7A)
        with self.context():
            init = self.task.data_init if self.eager else jax.jit(
                self.task.data_init, out_shardings=self.state_shardings.params)
            params = init(state.params, self.put_batch(host_batch), rng)
        # the EMA copy needs buffers of its own (the train step donates both), in float32
        ema = None if state.ema_params is None else jax.tree.map(
            lambda x: jnp.array(x, jnp.float32, copy=True),
            {k: params[k] for k in state.ema_params})
        return state.replace(params=params, ema_params=ema)

    def to_step_form(self, state: TrainState) -> TrainState:
        """The state as the train step takes it: on every path the same global arrays that
        checkpoints, eval and sampling take, so the state itself."""
        return state

    def from_step_form(self, state: TrainState) -> TrainState:
        """The state as checkpoints, eval and sampling take it: the train step's own."""
        return state

    def train_step(self, jit: bool = True):
        """(state, batch) -> (state, scalar metrics): the one step, as the run's path
        (`parallel`) adapts it, jitted over the mesh."""
        step = self.parallel.step(functools.partial(
            make_train_step, tx=self.tx, schedule=self.schedule,
            ema_decay=self.cfg.optim.ema_decay, grad_accum=self.cfg.train.grad_accum), self.task)
        if not jit:  # --debug: eager, so a debugger (or jax_debug_nans) stops inside the step
            def eager_step(state, batch):
                with jax.disable_jit():
                    return step(state, batch)
            return eager_step
        return jax.jit(step, in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=(self.state_shardings, None), donate_argnums=(0,))

    @functools.cached_property
    def eval_step(self):
        """(params, batch, rng) -> the task's eval metrics summed over the batch's mask, and
        'count' (train/evaluation.py), jitted once per Setup in the run's shardings."""
        return Evaluation(self).compiled('eval', masked_sums(self.task.eval_metrics))

    def put_batch(self, batch: dict) -> dict:
        """This process's host batch as the train/eval step takes it."""
        return mesh_lib.put_batch(batch, self.batch_sharding)

    def put_train_batch(self, batch: dict) -> dict:
        """This process's host batch as the train step takes it: as `put_batch`, on every
        path."""
        return self.put_batch(batch)


def dummy_batch(spec: data.DataSpec, size: int) -> dict:
    """Zeros shaped like a real batch: for initialisation and shape inference."""
    return spec.dummy_batch(size)


def prepare(cfg, eager: bool = False, devices=None, spec: data.DataSpec | None = None) -> Setup:
    """Validate and build a run's Setup on `devices` (default: all of them).

    `eager` (--debug) runs on one device with the train step un-jitted. `spec` replaces the
    configured data set's (benchmarks on synthetic batches of a given shape).
    """
    validate_common(cfg)
    spec = spec or describe_data(cfg)
    task = make_task(cfg, spec)   # validates the model config against the data
    evaluators.validate(task)
    if eager:
        mesh = mesh_lib.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
    else:
        mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    rules = mesh_lib.rules_from_config(cfg)
    parallel = pmap_lib.choose(cfg, task, mesh, mesh_lib.batch_sharding(mesh, rules), eager)
    ways = mesh_lib.batch_divisor(mesh, rules)
    # the mesh's own hosts: this run's processes, or a topology's when compiling ahead of time
    processes = len({d.process_index for d in mesh.devices.flat})
    for key in ('train', 'eval'):
        size = cfg[key].batch_size
        check(size % ways == 0 and size % processes == 0,
              f'{key}.batch_size={size} cannot be split over the {ways} batch shards of mesh '
              f'{dict(mesh.shape)} and {processes} process(es); set '
              f'--config.{key}.batch_size to a multiple of {np.lcm(ways, processes)}.')
    accum = cfg.train.grad_accum
    check(accum >= 1 and cfg.train.batch_size % (ways * accum) == 0,
          f'train.grad_accum={accum} must be >= 1 and divide the {cfg.train.batch_size // ways} '
          f'examples of each of the {ways} batch shards; set --config.train.batch_size to a '
          f'multiple of {ways * max(accum, 1)} or change --config.train.grad_accum.')
    check(not task.couples_batch or accum == 1,
          f'task "{task.name}" needs the whole batch in one loss (its examples are each other\'s '
          'negatives or batch statistics); set --config.train.grad_accum=1.')
    groups = tuple(phase.group for phase in task.phases())
    check_groups(cfg.optim, groups)
    for phase in task.phases():   # each of a phase's updates takes its share of every shard
        parts = ways * accum * phase.repeats * phase.unit
        units = f' x groups of {phase.unit} examples' if phase.unit > 1 else ''
        check(cfg.train.batch_size % parts == 0, f'train.batch_size={cfg.train.batch_size} '
              f'cannot be split into the {phase.repeats} {phase.group} updates x {accum} '
              f'microbatches x {ways} batch shards{units} of a step; set it to a multiple of '
              f'{parts}.')
    if not eager:
        mesh_lib.check_process_rows(mesh_lib.batch_sharding(mesh, rules), cfg.train.batch_size)
    tx, schedule = make_group_optimizers(cfg.optim, cfg.train.steps, groups) if groups else \
        make_optimizer(cfg.optim, cfg.train.steps)
    mup_roles = None
    if cfg.model.get('mup_base_width', 0):
        check(not groups, f'µP (model.mup_base_width) is for one optimizer; task "{task.name}" '
                          'has several players.')
        mup_roles = _mup_roles(task, cfg, spec)
        tx = optax.chain(tx, mup.scale_updates(mup_roles, mup.width_multiplier(cfg)))
    boxed = jax.eval_shape(functools.partial(_init_boxed, task, tx, cfg, mup_roles),
                           jax.random.key(0))
    logical_specs = nn.get_partition_spec(boxed)
    if cfg.optim.get('optimizer', 'adamw') == 'lars':   # optax.lars: one norm per array
        specs = jax.tree.leaves(logical_specs.params,
                                is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        check(not any('layers' in tuple(spec) for spec in specs), 'optim.optimizer="lars" '
              'takes one trust ratio per parameter array, but this model stacks its layers in '
              'one array (a scanned transformer); set --config.optim.optimizer=adamw.')
    state_shardings = mesh_lib.logical_to_shardings(logical_specs, mesh, rules)
    mesh_lib.check_divisible(nn.meta.unbox(boxed.params), logical_specs.params,
                             state_shardings.params)
    return Setup(cfg, spec, task, mesh, rules, tx, schedule, state_shardings, logical_specs,
                 mesh_lib.batch_sharding(mesh, rules), eager, parallel, mup_roles)


def describe_data(cfg) -> data.DataSpec:
    """data.describe, which prepares a local data set on first use, by process 0 first: the
    others then find it prepared (a shared file system) or prepare their own copy, so no two
    processes ever write one data folder at once."""
    if jax.process_count() == 1:
        return data.describe(cfg.data)
    from jax.experimental import multihost_utils
    spec = data.describe(cfg.data) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices('dul_jax: data set prepared by process 0')
    return spec or data.describe(cfg.data)


def _mup_roles(task, cfg, spec) -> dict[str, str]:
    """Each parameter's µP role, from its shape here and in the model at the base width."""
    check(task.width_keys, f'task "{task.name}" has no µP parametrization (model.mup_base_width); '
                           'set it to 0.')
    base_task = make_task(mup.base_config(cfg, task.width_keys), spec)
    batch, key = dummy_batch(spec, 1), jax.random.key(0)
    return mup.roles(jax.eval_shape(task.init, key, batch),
                     jax.eval_shape(base_task.init, key, batch))


def _init_boxed(task, tx, cfg, mup_roles, rng) -> TrainState:
    """A fresh train state with boxed (logically partitioned) params."""
    param_rng, state_rng = jax.random.split(rng)
    batch = dummy_batch(task.spec, 1)
    params = task.init(param_rng, batch)
    if mup_roles is not None:
        params = mup.scale_init(params, mup_roles, mup.width_multiplier(cfg))
    params = cast_params(params, param_dtype(cfg))
    model_state = task.init_model_state(param_rng, batch) \
        if isinstance(task, ModelState) else None
    return create_state(params, tx, state_rng, cfg.optim.ema_decay, model_state,
                        task.ema_groups())

