"""Warm start: a new run's params taken from another run (`init_from`), all of them or those whose
path matches `init_params` (a regular expression on names like 'params/blocks/attn/qkv/kernel').

The source is a run's workdir (its newest checkpoint) or one checkpoint folder (WORKDIR/
checkpoints/STEP). Its eval params are taken (the EMA where the source kept one), restored as
saved, without the source's config, so a source of another size can give the layers that match.
The optimizer starts afresh, at step 0.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dul_jax import storage
from dul_jax.errors import UserError
from dul_jax.train.state import with_ema


def _checkpoint_folder(source: str):
    root = storage.path(source)
    if (root / 'state').is_dir():          # WORKDIR/checkpoints/STEP
        return root
    folder = root / 'checkpoints'
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []
    if not steps:
        raise UserError(f'init_from={source} is neither a workdir with checkpoints nor a '
                        'checkpoint folder (WORKDIR/checkpoints/STEP); set --config.init_from '
                        'to one.')
    return folder / str(steps[-1])


def _flat(tree) -> dict[str, np.ndarray]:
    return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def source_params(source: str) -> dict[str, np.ndarray]:
    """The eval params of the checkpoint at `source`, by path name, as host arrays."""
    folder = _checkpoint_folder(source)
    try:
        with ocp.StandardCheckpointer() as checkpointer:   # closed: no pending tasks left behind
            saved = checkpointer.restore(folder / 'state')
    except Exception as e:  # orbax raises many types for unreadable files
        raise UserError(f'init_from checkpoint {folder} could not be read ({type(e).__name__}); '
                        'set --config.init_from to an intact run.') from e
    params = with_ema(saved['params'], saved.get('ema_params'))
    return {name: np.asarray(leaf) for name, leaf in _flat(params).items()}


def warm_start(state, source: str, pattern: str = ''):
    """`state` with the params (and EMA params) named by `pattern` replaced by `source`'s;
    UserError (one sentence) for a name that is missing there or has another shape. Model state
    that mirrors params under the same names (BYOL's target network) takes them too."""
    loaded = source_params(source)
    matcher = re.compile(pattern) if pattern else None
    targets = _flat(state.params)
    chosen = [name for name in targets if matcher is None or matcher.search(name)]
    if not chosen:
        raise UserError(f'init_params={pattern!r} matches none of this model\'s params (e.g. '
                        f'{next(iter(targets))}); set --config.init_params to a regular '
                        'expression that does.')
    for name in chosen:
        if name not in loaded:
            raise UserError(f'init_from={source} has no param {name}; set --config.init_params '
                            'to the params the two models share.')
        if loaded[name].shape != targets[name].shape:
            raise UserError(f'param {name} is {loaded[name].shape} in init_from={source} but '
                            f'{targets[name].shape} here; set --config.init_params to leave it '
                            'out.')
    chosen = set(chosen)

    def replace(path, leaf):
        name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)
        if name not in chosen:
            return leaf
        return jax.device_put(loaded[name].astype(leaf.dtype), leaf.sharding)

    params = jax.tree_util.tree_map_with_path(replace, state.params)
    # a copy: the train step donates the state, and one buffer cannot be donated twice
    ema = None if state.ema_params is None else \
        jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True),
                     {k: params[k] for k in state.ema_params})
    model_state = None if state.model_state is None else \
        jax.tree_util.tree_map_with_path(replace, state.model_state)
    return state.replace(params=params, ema_params=ema, model_state=model_state), len(chosen)
