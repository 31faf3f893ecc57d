"""The interface between the trainer and a model family, and the plumbing every family shares.

A family is one module: `dul_jax/tasks/NAME.py` for `task = 'NAME'`, or any importable module
for a dotted name (`task = 'my_pkg.my_family'`), defining `TASK`, a subclass of `Task`, and
usually `default_model_config()`. Modules are imported by name when a config asks for them
(as big_vision finds its models), so adding a family edits no existing file.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax import images
from dul_jax.config import check
from dul_jax.data import DataSpec
from dul_jax.errors import UserError
from dul_jax.losses import pixels
from dul_jax.ops import Kernels
from dul_jax.tasks import capabilities

Batch = dict[str, jax.Array]
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
REMAT_CHOICES = ('none', 'full', 'dots')


class StepContext(NamedTuple):
    """What a training step tells every family's loss besides params, batch and key."""
    step: jax.Array              # int32 scalar: optimizer steps taken (schedules inside a loss)
    model_state: Any = None      # TrainState.model_state (None unless init_model_state)
    phase: str | None = None     # the player being updated, where `phases` declares several


class LossOut(NamedTuple):
    """What every family's loss returns: the scalar to differentiate, scalar metrics, and the
    new model state (None for families without one)."""
    loss: jax.Array
    metrics: dict[str, jax.Array]
    model_state: Any = None


@dataclasses.dataclass(frozen=True)
class Phase:
    """One player's turn in a training step: `repeats` optimizer updates of the params under the
    top-level key `group`, each on its own 1/repeats of the batch (e.g. a GAN's n critic steps),
    whose every batch shard holds whole groups of `unit` examples (PacGAN's packs)."""
    group: str
    repeats: int = 1
    unit: int = 1


def builtin_families() -> list[str]:
    """The family modules of the dul_jax.tasks package (dul_jax/tasks/)."""
    package = importlib.import_module('dul_jax.tasks')
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if m.name not in ('base', 'capabilities'))


def task_class(name: str) -> type['Task']:
    """The `TASK` class of family `name`: dul_jax.tasks.NAME, or the module NAME if dotted."""
    module_name = name if '.' in name else f'dul_jax.tasks.{name}'
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # the family exists but one of its own imports is missing: a real bug
        raise UserError(f'unknown task "{name}"; set --config.task to one of '
                        f'{", ".join(builtin_families())} or to an importable module '
                        '(my_pkg.my_family) that defines TASK.') from None
    cls = getattr(module, 'TASK', None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f'task module {module_name} defines no TASK (a dul_jax.tasks.base.Task '
                        'subclass); add `TASK = YourTask` to it.')
    gaps = capabilities.missing(cls)
    if gaps:
        raise UserError(f'task {cls.__name__} names capabilities it does not define '
                        f'({", ".join(gaps)}); define them or drop them from its class line.')
    return cls


def make_task(cfg, spec: DataSpec) -> 'Task':
    """The configured family's task: validated against `spec`, then its model built."""
    return task_class(cfg.task)(cfg, spec)


class Task:
    """Binds the family's modules, its loss and its per-example eval metrics; all pure.

    `__init__` validates the config against the data (`validate`, UserError on the first
    problem) before building the modules (`build_models`), so a constructor never has to fall
    back on a default for a bad value. Subclasses implement the methods that raise
    NotImplementedError; what a family can do beyond that (generate, make pictures of examples,
    ...) are the capabilities of tasks/capabilities.py.
    """
    models: dict[str, nn.Module]
    takes_prompt = False   # True: `sample` continues sample.prompt (text models)
    # model keys that grow with width, for µP's base-width model (train/mup.py); () has no µP
    width_keys: tuple[str, ...] = ()
    # Parameter collections that are lookup tables, not matmul weights: left out of N (the
    # non-embedding parameters of scaling laws) by `dul-jax sweep`.
    embedding_names: tuple[str, ...] = ()
    # True: the loss couples the examples of a batch (contrastive negatives, batch statistics),
    # so the trainer refuses to split it (train.grad_accum > 1, parallelism='pmap').
    couples_batch: bool = False

    def __init__(self, cfg, spec: DataSpec):
        self.cfg, self.spec, self.name = cfg, spec, cfg.task
        self.kernels = Kernels.from_config(cfg.ops)  # each op's kernel; UserError if unknown
        self.validate()
        self.models = self.build_models()

    # ---- what every family implements ----------------------------------------------------

    def build_models(self) -> dict[str, nn.Module]:
        """The family's Flax modules by name, from an already validated config: by default
        {'model': build_model()}; a family of several modules (a GAN's players) overrides this
        and names each after its params' top-level group."""
        return {'model': self.build_model()}

    def build_model(self) -> nn.Module:
        """The one Flax module of a single-module family, from an already validated config."""
        raise NotImplementedError

    def example_size(self) -> int:
        """Tokens (or pixels, or patches) per example, for throughput in tokens/s."""
        raise NotImplementedError

    def init(self, rng: jax.Array, batch: Batch) -> Any:
        """Boxed (logically partitioned) params, from a batch of the right shapes."""
        raise NotImplementedError

    def loss(self, params, batch: Batch, rng: jax.Array, ctx: StepContext) -> LossOut:
        """The scalar training loss (for value_and_grad), scalar metrics and the new model state,
        the same signature for every family: `ctx` carries the step, the model state and the
        player being updated."""
        raise NotImplementedError

    def eval_metrics(self, params, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-example metrics, each (batch,); the trainer averages them over the mask. `rng` is
        the same at every eval for a given batch, so evals at different steps compare."""
        raise NotImplementedError

    def save_samples(self, outputs: dict, path_stem: str) -> list[str]:
        """Write host outputs of `sample` and/or `pictures` (the capabilities Generates and
        Pictures), merged into one dict, to files named `path_stem*`; return the paths."""
        raise NotImplementedError

    # ---- defaults a family may override (the other capabilities: tasks/capabilities.py) ----

    def phases(self) -> tuple[Phase, ...]:
        """Several players trained in turn, each a group of params with its own optimizer
        (optim.groups.GROUP overrides optim.*); () trains all params with one optimizer."""
        return ()

    def ema_groups(self) -> tuple[str, ...] | None:
        """The top-level param groups an EMA (optim.ema_decay) follows; None: all params."""
        return None

    def after_update(self, params, model_state, step: jax.Array) -> Any:
        """The model state after each optimizer update, from the updated params and the step
        before it (BYOL's target network: an EMA of the online network's new params); by
        default the loss's model state as it is."""
        return model_state

    def assign_params(self, params, model_state) -> Any:
        """Params after each update with those the task sets itself, from its new model state
        (the VQ-VAE's EMA codebook): the optimizer's step on them is overwritten; by default
        the updated params as they are."""
        return params

    def validate(self) -> None:
        """UserError for a config that cannot work with this data. Subclasses call super()."""
        m = self.cfg.model
        if 'dtype' in m:
            check(m.dtype in DTYPES,
                  f'model.dtype must be one of {", ".join(DTYPES)}, got "{m.dtype}".')
        if 'remat' in m:
            check(m.remat in REMAT_CHOICES,
                  f'model.remat must be one of {", ".join(REMAT_CHOICES)}, got "{m.remat}".')
        if 'scan_unroll' in m:
            check(m.scan_unroll >= 0, 'model.scan_unroll (layers per scan step; 0 = all, '
                                      f'unrolled) must be >= 0, got {m.scan_unroll}.')
        check(not m.get('class_conditional', False) or self.spec.num_classes > 0,
              f'model.class_conditional needs labels, but data set "{self.spec.name}" has none; '
              'set --config.model.class_conditional=False.')
        label = self.cfg.sample.get('label', -1)
        check(label == -1 or (self.conditional and 0 <= label < self.spec.num_classes),
              f'sample.label={label} needs a class-conditional model and a class in '
              f'[0, {self.spec.num_classes}); leave it at -1 (every class in turn) otherwise.')
        check(not self.cfg.sample.get('prompt', '') or self.takes_prompt,
              f'sample.prompt is for text models; task "{self.name}" on "{self.spec.name}" '
              'samples without one.')

    def flops_per_example(self, params) -> float | None:
        """Analytic training FLOPs per example where the family knows them; None lets the trainer
        use XLA's count of the step."""
        return None

    def position_decoder(self, params):
        """An exact one-position-at-a-time model for `dul-jax compress` (see the PositionDecoder
        of dul_jax/compress/rows.py), or None where the family has no exact discrete likelihood."""
        return

    # ---- shared plumbing -------------------------------------------------------------------

    def require_images(self) -> None:
        check(self.spec.is_image, f'task "{self.name}" models images, but data set '
              f'"{self.spec.name}" is {self.spec.kind}; set --config.data.name to an image set.')

    def require_pixel_likelihood(self) -> None:
        """model.likelihood names a decoder likelihood (losses/pixels.py) these images allow."""
        m = self.cfg.model
        check(m.likelihood in pixels.LIKELIHOODS, f'model.likelihood must be one of '
              f'{", ".join(pixels.LIKELIHOODS)}, got "{m.likelihood}".')
        check(m.likelihood != 'bernoulli' or self.spec.num_levels == 2,
              f'model.likelihood="bernoulli" needs 2-level images, but "{self.spec.name}" has '
              f'{self.spec.num_levels} levels; set --config.model.likelihood=categorical or '
              'logistic_mixture.')
        check(m.mixtures > 0, f'model.mixtures must be positive, got {m.mixtures}.')

    @property
    def model(self) -> nn.Module:
        """The one module of a single-module family (`models['model']`)."""
        if 'model' not in self.models:
            raise AttributeError(f'{type(self).__name__} has several modules '
                                 f'({", ".join(self.models)}); use models[NAME].')
        return self.models['model']

    @property
    def dtype(self):
        """The compute dtype (model.dtype); params stay float32."""
        return DTYPES[self.cfg.model.dtype]

    @property
    def conditional(self) -> bool:
        return bool(self.cfg.model.get('class_conditional', False))

    def labels(self, batch: Batch) -> jax.Array | None:
        """The batch's class labels as int32 for a class-conditional model, else None."""
        return batch['label'].astype(jnp.int32) if self.conditional else None

    def sample_labels(self, num: int) -> jax.Array | None:
        """Classes 0, 1, ..., K-1, 0, ... for `num` conditional samples (a grid's columns), or
        all of class `sample.label` where it is set."""
        if not self.conditional:
            return None
        label = self.cfg.sample.get('label', -1)
        return jnp.full((num,), label, jnp.int32) if label >= 0 else \
            jnp.arange(num, dtype=jnp.int32) % self.spec.num_classes

    def save_image_grid(self, levels: np.ndarray, path: str, num_levels: int | None = None,
                        cols: int | None = None) -> str:
        """(N, H, W, C) images as one PNG, one column per class for a conditional model, scaled
        so small images show at >= 64 pixels."""
        if cols is None and self.conditional:
            cols = self.spec.num_classes
        return images.save_grid(levels, path, num_levels or self.spec.num_levels, cols=cols,
                                scale=max(1, 64 // levels.shape[1]))

    def save_reconstruction_grid(self, originals: np.ndarray, reconstructions: np.ndarray,
                                 path: str, cols: int = 10) -> str:
        """(N, H, W, C) images in [0, 1] and their reconstructions as one PNG: per block of
        `cols`, a row of originals above a row of reconstructions."""
        return self.save_rows_grid([originals, reconstructions], path, cols)

    def save_rows_grid(self, parts: list[np.ndarray], path: str, cols: int = 10) -> str:
        """Equally shaped (N, H, W, C) arrays in [0, 1] as one PNG: per block of `cols` examples,
        a row of each part (originals above reconstructions, or above augmented views)."""
        num, h, w, c = parts[0].shape
        cols = min(num, cols)
        rows = []
        for start in range(0, num, cols):
            for part in parts:
                block = part[start:start + cols]
                rows.append(np.concatenate([block, np.zeros((cols - len(block), h, w, c),
                                                            block.dtype)]))
        return self.save_image_grid(np.concatenate(rows), path, num_levels=2, cols=cols)


def jit_method(*static: str) -> Callable:
    """`jax.jit` for a Task method: the task (`self`) and the named arguments are static."""
    return lambda method: jax.jit(method, static_argnames=('self',) + static)
