"""A trained run from its workdir, for notebooks (`dul_jax.load_run`) and `dul-jax export`.

The run is rebuilt from what its workdir keeps (config.json, data_spec.json, a checkpoint), so it
opens without the training data and on gs:// workdirs. It lives on one device, where any batch
size fits; the params are the eval params (the EMA where the run keeps one).

An export is one msgpack file (flax.serialization) of {'params': nested dicts of numpy arrays,
'config': config.json's text, 'data_spec': data_spec.json's text, 'step': int}; it loads with
`flax.serialization.msgpack_restore(open(path, 'rb').read())`, without dul_jax.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import numpy as np

from dul_jax import config as config_lib
from dul_jax import data, storage
from dul_jax.errors import UserError
from dul_jax.tasks.capabilities import Generates, Pictures
from dul_jax.train.checkpoint import Checkpointer, restore_state
from dul_jax.train.evaluation import means
from dul_jax.train.setup import Setup, prepare
from dul_jax.train.state import TrainState, eval_key, eval_params
from dul_jax.train.workdir import kept_spec, load_config_of

EXPORT_SUFFIX = '.msgpack'


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A run's config (as trained, with any overrides), data spec, task and eval params at
    checkpoint `step`; `models` are the task's flax modules by name, and `model` the one module
    of a single-module family: `model.apply({'params': params}, ...)`.
    """
    cfg: Any
    spec: data.DataSpec
    task: Any
    params: Any          # on one device
    step: int
    workdir: str
    setup: Setup = dataclasses.field(repr=False)

    @property
    def models(self) -> dict[str, nn.Module]:
        return self.task.models

    @property
    def model(self) -> nn.Module:
        if 'model' not in self.models:
            raise UserError(f'task "{self.task.name}" has several modules '
                            f'({", ".join(self.models)}); use Run.models[NAME].')
        return self.models['model']

    def sample(self, num: int, seed: int | None = None) -> dict[str, np.ndarray]:
        """`num` new examples as host numpy arrays: {'samples': images as levels, token windows
        or points, and the family's other outputs}. The key is the one `dul-jax sample --seed`
        uses (`seed`, default the run's, folded with the step)."""
        if not isinstance(self.task, Generates):
            other = '; use Run.pictures' if isinstance(self.task, Pictures) else ''
            raise UserError(f'task "{self.task.name}" does not generate (no Generates '
                            f'capability){other}.')
        rng = self._key(num, seed)
        with self.setup.context():
            outputs = self.task.sample(self.params, rng, num)
        return jax.tree.map(np.asarray, jax.device_get(outputs))

    def pictures(self, num: int, seed: int | None = None) -> dict[str, np.ndarray]:
        """What the model makes of the first `num` eval examples (reconstructions, masked inputs,
        augmented views), as host numpy arrays; this needs the data set, as `eval_examples`
        does. The key is `sample`'s, so these are the pictures `dul-jax sample --seed` saves."""
        if not isinstance(self.task, Pictures):
            other = '; use Run.sample' if isinstance(self.task, Generates) else ''
            raise UserError(f'task "{self.task.name}" makes no pictures of examples (no Pictures '
                            f'capability){other}.')
        rng = self._key(num, seed)
        examples = {k: v for k, v in self.eval_examples(num).items() if k != 'mask'}
        with self.setup.context():
            outputs = self.task.pictures(self.params, rng, examples)
        return jax.tree.map(np.asarray, jax.device_get(outputs))

    def _key(self, num, seed) -> jax.Array:
        if not isinstance(num, int) or num < 1:
            raise UserError(f'num must be a positive int, got {num!r}.')
        return jax.random.fold_in(jax.random.key(self.cfg.seed if seed is None else seed),
                                  self.step)

    def evaluate(self, batch: dict) -> dict[str, float]:
        """The task's eval metrics averaged over `batch` (host arrays as `eval_examples` gives;
        rows with mask 0 are left out), with the key of the eval's first batch, so a batch of
        the split's first examples gives what `dul-jax eval` does on them."""
        batch = self._checked(batch)
        with self.setup.context():
            sums = self.setup.eval_step(self.params, self.setup.put_batch(batch),
                                        jax.random.fold_in(eval_key(self.cfg.seed), 0))
        return means(sums)[0]

    def bits_per_dim(self, batch: dict) -> float:
        """Mean bits per dimension (pixel channel or token) of `batch` under the model."""
        metrics = self.evaluate(batch)
        if 'bits_per_dim' not in metrics:
            raise UserError(f'task "{self.task.name}" reports no bits_per_dim (only '
                            f'{", ".join(sorted(metrics))}); use Run.evaluate.')
        return metrics['bits_per_dim']

    def eval_examples(self, num: int) -> dict:
        """The first `num` examples of the eval split (this needs the data set, unlike the rest)."""
        return next(data.eval_batches(self.cfg.data, num, max_examples=num))

    def _checked(self, batch) -> dict:
        key = self.spec.batch_key
        if not isinstance(batch, dict) or key not in batch:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise UserError(f'a batch of this {self.spec.kind} run is a dict with "{key}" (as '
                            f'Run.eval_examples gives), got {got}.')
        values = np.asarray(batch[key])
        if values.ndim != 1 + len(self.spec.shape) or values.shape[1:] != self.spec.shape \
                or not len(values):
            raise UserError(f'batch["{key}"] has shape {values.shape}, but this run takes '
                            f'(N >= 1, {", ".join(map(str, self.spec.shape))}); reshape it.')
        if not self.spec.is_points and (not np.issubdtype(values.dtype, np.integer) or
                values.min() < 0 or values.max() >= self.spec.num_levels):
            raise UserError(f'batch["{key}"] must hold integers in [0, {self.spec.num_levels}), '
                            f'got {values.dtype} values in [{values.min()}, {values.max()}].')
        if self.task.conditional and 'label' not in batch:
            raise UserError('this model is class-conditional, so the batch needs "label".')
        mask = np.asarray(batch.get('mask', np.ones(len(values))), np.float32)
        if mask.shape != (len(values),) or not mask.sum() > 0:
            raise UserError(f'batch["mask"] must be {len(values)} weights, not all 0.')
        return {**batch, 'mask': mask}


def load_run(workdir: str, step: int | None = None, overrides: list[str] = ()) -> Run:
    """The run in `workdir` at checkpoint `step` (default: the latest), on one device;
    `overrides` are `key=value` config settings (e.g. 'sample.temperature=0.8')."""
    return _load(load_config_of(workdir, list(overrides)), workdir, step)


def _load(cfg, workdir: str, step: int | None) -> Run:
    setup, state = open_run(cfg, workdir, step, one_device=True)
    return Run(cfg, setup.spec, setup.task, eval_params(state), int(state.step), workdir, setup)


def open_run(cfg, workdir: str, step: int | None = None, *,
             one_device: bool = False) -> tuple[Setup, TrainState]:
    """The Setup (on the kept data spec) and state at checkpoint `step` (default: the latest) of
    the run in `workdir`, on the configured mesh or, with `one_device`, on one device: the one
    way eval, sample, `load_run`, export and compress open a trained run."""
    _kept_step(workdir, step)   # a missing folder or step in one sentence, before building
    spec = kept_spec(cfg, workdir)
    devices = None
    if one_device:
        cfg, devices = _on_one_device(cfg), jax.devices()[:1]
    setup = prepare(cfg, devices=devices, spec=spec)
    # step None: the latest that restores (a damaged newest one is set aside, as train does)
    state = restore_state(storage.path(workdir) / 'checkpoints', setup.abstract_state(), step)
    return setup, state


def _on_one_device(cfg):
    """A copy of `cfg` for one device, which holds any batch: the mesh, batch sizes and step
    layout of training don't matter for the params, so they are set to what fits one device."""
    one = cfg.copy_and_resolve_references()
    one.parallelism = 'jit'
    one.mesh.data, one.mesh.fsdp, one.mesh.tensor = 1, 1, 1
    if 'slices' in one.mesh:
        one.mesh.slices = 1
    one.train.batch_size = one.eval.batch_size = one.train.grad_accum = 1
    return one


class StepNotKept(UserError):
    """A checkpoint step the workdir does not keep; `kept` lists the steps it does."""

    def __init__(self, message: str, kept):
        super().__init__(message)
        self.kept = kept


def _kept_step(workdir: str, step: int | None) -> int:
    """`step`, or the latest, checked to be a kept checkpoint (before anything is built)."""
    directory = storage.path(workdir) / 'checkpoints'
    if not directory.is_dir():   # checked first: the Checkpointer would create the folder
        raise UserError(f'{workdir} has no checkpoints/; pass the workdir of a run that saved one.')
    ckpt = Checkpointer(directory, async_save=False)
    try:
        kept = ckpt.all_steps()
    finally:
        ckpt.close()
    if not kept:
        raise UserError(f'{directory} holds no checkpoint; train first or pass another workdir.')
    if step is None:
        return kept[-1]
    if step not in kept:
        raise StepNotKept(f'{workdir} keeps no checkpoint of step {step}; pick one of {kept}.',
                          kept)
    return step


def export(cfg, workdir: str, output: str, step: int | None = None) -> dict:
    """`dul-jax export`: the eval params of checkpoint `step` (default: the latest), with the
    config, data spec and step, as one msgpack file at `output`; returns what was written."""
    if not str(output).endswith(EXPORT_SUFFIX):
        raise UserError(f'--output {output} must end in {EXPORT_SUFFIX} (the file is msgpack).')
    if storage.path(output).is_dir():
        raise UserError(f'--output {output} is a folder; pass a file name.')
    run = _load(cfg, workdir, step)
    params = jax.tree.map(np.asarray, jax.device_get(run.params))
    blob = flax.serialization.msgpack_serialize({
        'params': params, 'config': config_lib.to_json(run.cfg),
        'data_spec': run.spec.to_json(), 'step': run.step})
    path = storage.write_atomic(output, blob)
    return {'path': str(path), 'step': run.step, 'bytes': len(blob),
            'num_params': sum(int(np.size(x)) for x in jax.tree.leaves(params)),
            'ema': run.cfg.optim.ema_decay > 0}
