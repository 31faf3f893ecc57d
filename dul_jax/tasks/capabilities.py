"""What a family can do beyond the core `Task` contract: each capability is a Protocol that a
family names on its class line (`class VAETask(Task, Posterior, Bounds, ...)`), and whoever
needs it asks with `isinstance(task, Capability)`: the evaluators, the coder, the loop. A family
that names a capability must define its methods (`missing` checks it when the family loads), and
defines none it lacks: a family that does not generate has no `sample`.
"""

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Generates(Protocol):
    def sample(self, params, rng: jax.Array, num: int) -> dict[str, jax.Array]:
        """`num` new examples from the model: {'samples': images as levels (num, H, W, C), token
        windows (num, T) or points (num, D)} plus any other named outputs (a guidance sweep),
        for the trainer's samples, `dul-jax sample` and `Run.sample`."""


@runtime_checkable
class Pictures(Protocol):
    def pictures(self, params, rng: jax.Array, examples: dict) -> dict[str, jax.Array]:
        """What the model makes of given examples (a host batch with 'image' and 'label', as
        Evaluation.first_examples gives): originals, reconstructions, masked inputs, views. The
        names differ from `sample`'s, since `Task.save_samples` takes both in one dict."""


@runtime_checkable
class Features(Protocol):
    def features(self, params, levels: jax.Array) -> jax.Array:
        """(B, D) representations of (B, H, W, C) images, for probes (evaluators/probe.py)."""


@runtime_checkable
class SampleImages(Protocol):
    def sample_images(self, params, rng: jax.Array, num: int) -> jax.Array:
        """(num, H, W, C) sampled images as levels of the data set, for FID (evaluators/fid.py)."""


@runtime_checkable
class SamplePoints(Protocol):
    def sample_points(self, params, rng: jax.Array, num: int) -> jax.Array:
        """(num, D) sampled points of a point data set (evaluators/modes.py)."""


@runtime_checkable
class Bounds(Protocol):
    def bound_terms(self, params, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-example terms (B,) in nats whose sum bounds -log p(x) (evaluators/bound.py)."""


@runtime_checkable
class ImportanceWeights(Protocol):
    def log_importance_weights(self, params, batch: dict, rng: jax.Array,
                               num: int) -> jax.Array:
        """(B, num) log p(x, z_i) - log q(z_i | x) for `num` latent draws z_i ~ q(z | x) per
        example, in nats (evaluators/iwae.py)."""


@runtime_checkable
class Posterior(Protocol):
    def posterior(self, params, levels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A diagonal Gaussian q(z | x) of (B, H, W, C) images: mean and log-variance, each
        (B, D) (evaluators/posterior.py)."""


@runtime_checkable
class PixelLikelihood(Protocol):
    def pixel_log_probs(self, params, z: jax.Array) -> jax.Array:
        """log p(x | z) of every level of every pixel value of the images decoded from (B, D)
        latents: (B, H, W, C, levels), normalised. With `Posterior`, what bits-back coding needs
        (`dul-jax compress`, dul_jax/compress/bitsback.py)."""


@runtime_checkable
class DataInit(Protocol):
    def data_init(self, params, batch: dict, rng: jax.Array) -> Any:
        """Params with their data-dependent part (e.g. ActNorm's) initialised from `batch`, the
        first training batch of a fresh run; resumed runs restore it from the checkpoint."""


@runtime_checkable
class ModelState(Protocol):
    def init_model_state(self, rng: jax.Array, batch: dict) -> Any:
        """Variables the forward pass updates rather than the optimizer (spectral norm's
        power-iteration vectors), kept in TrainState.model_state and checkpointed with it; the
        loss returns the new state in LossOut, and Task.after_update / assign_params follow it."""


CAPABILITIES = (Generates, Pictures, Features, SampleImages, SamplePoints, Bounds,
                ImportanceWeights, Posterior, PixelLikelihood, DataInit, ModelState)


def members(capability) -> tuple[str, ...]:
    return tuple(name for name in vars(capability) if not name.startswith('_')
                 and callable(vars(capability)[name]))


def missing(cls) -> list[str]:
    """`Capability.method` for each capability `cls` names on its class line but does not define
    (the Protocol's own empty body does not count)."""
    found = []
    for capability in CAPABILITIES:
        if not issubclass(cls, capability) or capability not in cls.__mro__:
            continue
        for name in members(capability):
            owner = next(c for c in cls.__mro__ if name in vars(c))
            if owner is capability:
                found.append(f'{capability.__name__}.{name}')
    return found
