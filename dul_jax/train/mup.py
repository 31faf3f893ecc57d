"""µP for Adam (Yang et al. 2022, "Tensor Programs V", Table 3), switched on by
`model.mup_base_width > 0`: the learning rate tuned at the base width transfers to any width.

Each parameter's role comes from comparing its shape with the same parameter of the model built
at the base width (the `width_keys` of the family's task scaled by base / embed_dim), as
microsoft/mup's base shapes do: dimensions that differ grow with width.
- hidden (two or more growing dimensions: attention and MLP matrices): Adam lr / m;
- readout (one growing dimension, not the last: the output layer's kernel): Adam lr / m and the
  initial values times 1 / sqrt(m), i.e. init variance 1 / fan_in^2 at the base's scale;
- everything else (embeddings, position tables, biases and norm scales): unchanged;
with m = embed_dim / base_width. At m = 1 this is the standard parametrization exactly. Width
keeps the head size fixed (heads grow with width), so attention's 1 / sqrt(head_dim) is already
µP's; the scaled base must come out whole, or the config is refused.
"""

import math

import jax
import optax

from dul_jax.config import check

HIDDEN, READOUT, OTHER = 'hidden', 'readout', 'other'


def width_multiplier(cfg) -> float:
    """m = model.embed_dim / model.mup_base_width (1.0 where µP is off)."""
    base = cfg.model.get('mup_base_width', 0)
    return cfg.model.embed_dim / base if base else 1.0


def base_config(cfg, width_keys: tuple[str, ...]):
    """`cfg` with each model width key scaled by base / embed_dim (the base model's config)."""
    base_width = cfg.model.mup_base_width
    check(base_width > 0, f'model.mup_base_width must be positive for µP, got {base_width}.')
    base = cfg.copy_and_resolve_references()
    for key in width_keys:
        value = cfg.model[key] * base_width / cfg.model.embed_dim
        check(value == int(value) and value >= 1,
              f'µP scales model.{key}={cfg.model[key]} by mup_base_width / embed_dim = '
              f'{base_width}/{cfg.model.embed_dim} to {value:g}, not a whole number; choose '
              f'widths whose ratio to the base keeps every width key whole.')
        base.model[key] = int(value)
    return base


def _name(path) -> str:
    # flax's boxes (nn.Partitioned) add a `.value` step to the path of a boxed array
    return jax.tree_util.keystr(tuple(k for k in path
                                      if getattr(k, 'name', None) != 'value'))


def roles(shapes, base_shapes) -> dict[str, str]:
    """{parameter name: HIDDEN, READOUT or OTHER} from the shapes at the run's width and at the
    base width (trees of arrays or ShapeDtypeStructs with the same structure)."""
    found = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
    base_flat = jax.tree.leaves(base_shapes)
    check(len(flat) == len(base_flat), 'µP: the base-width model has other parameters than the '
          'model itself; its width keys must change shapes only.')
    for (path, leaf), base in zip(flat, base_flat, strict=True):
        name = _name(path)
        growing = [i for i, (a, b) in enumerate(zip(leaf.shape, base.shape, strict=True))
                   if a != b]
        if name.endswith(("bias']", "scale']")) or not growing:
            found[name] = OTHER
        elif len(growing) >= 2:
            found[name] = HIDDEN
        else:
            found[name] = OTHER if growing[0] == len(leaf.shape) - 1 else READOUT
    return found


def scale_init(params, role_of: dict[str, str], m: float):
    """`params` (boxed or not) with the readout's initial values times 1 / sqrt(m)."""
    def scaled(path, leaf):
        return leaf / math.sqrt(m) if role_of.get(_name(path)) == READOUT else leaf
    return jax.tree_util.tree_map_with_path(scaled, params)


def scale_updates(role_of: dict[str, str], m: float) -> optax.GradientTransformation:
    """The last link of the optimizer chain: hidden and readout updates times 1 / m (their Adam
    learning rate lr / m), the others unchanged."""
    def update_fn(updates, state, params=None):
        del params
        def scaled(path, u):
            return u / m if role_of.get(_name(path)) in (HIDDEN, READOUT) else u
        return jax.tree_util.tree_map_with_path(scaled, updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
