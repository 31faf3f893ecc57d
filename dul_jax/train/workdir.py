"""What a workdir keeps beside its checkpoints so a run stands on its own: config.json (the
resolved config) and data_spec.json (the DataSpec it was trained on).

With the kept spec, eval, sample, compress, export and `dul_jax.load_run` rebuild the model
without the training data: a char-level run's vocabulary, a data set's shape and levels are all
in the spec. Workdirs from before data_spec.json fall back on `data.describe`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from dul_jax import config as config_lib
from dul_jax import storage
from dul_jax.errors import UserError

if TYPE_CHECKING:   # both import jax: imported where used, so a missing run is said at once
    from dul_jax import data

CONFIG_FILE = 'config.json'
SPEC_FILE = 'data_spec.json'
# The data keys a DataSpec follows from; the others (dir, tfds_dir, url) only say where data is.
SPEC_KEYS = ('name', 'seq_len', 'text_vocab', 'num_levels')


def load_config_of(workdir: str, overrides: list[str] = ()):
    """The config a run in `workdir` was trained with, with `key=value` overrides applied."""
    saved = storage.read_text(storage.path(workdir) / CONFIG_FILE)
    if saved is None:
        raise UserError(f'{workdir} has no config.json; pass the --workdir of a run '
                        'started with `dul-jax train`.')
    cfg = with_defaults(config_lib.from_json(saved))
    for item in overrides:
        config_lib.apply_override(cfg, item)
    return cfg


def write_spec(workdir: str, spec: data.DataSpec) -> None:
    """Keep `spec` as WORKDIR/data_spec.json (written with config.json, so the two agree)."""
    storage.write_atomic(storage.path(workdir) / SPEC_FILE, spec.to_json())


def kept_spec(cfg, workdir: str) -> data.DataSpec:
    """The DataSpec of the run in `workdir` for `cfg`: the kept one, unless `cfg` (overrides)
    changes a data key it follows from, or the workdir predates data_spec.json; then
    `data.describe`, which needs the data set."""
    from dul_jax import data
    root = storage.path(workdir)
    text = storage.read_text(root / SPEC_FILE)
    saved_cfg = storage.read_text(root / CONFIG_FILE)
    if text is None or saved_cfg is None:
        return data.describe(cfg.data)
    trained = config_lib.from_json(saved_cfg).data
    if any(trained.get(k) != cfg.data.get(k) for k in SPEC_KEYS):
        return data.describe(cfg.data)
    try:
        return data.DataSpec.from_json(text)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f'{root / SPEC_FILE} is not a data spec ({type(e).__name__}: {e}); delete '
                        'it to describe the data set again from its files.') from None


def with_defaults(saved):
    """`saved` with the keys a newer dul_jax added since the run was trained set to their
    defaults (base_config and the family's default_model_config); saved values win."""
    from dul_jax.tasks import base as tasks_base
    defaults = config_lib.base_config().to_dict()
    family = sys.modules[tasks_base.task_class(saved.task).__module__]
    if hasattr(family, 'default_model_config'):
        defaults['model'] = family.default_model_config().to_dict()
    return type(saved)(_merged(defaults, saved.to_dict()))


def _merged(defaults: dict, saved: dict) -> dict:
    out = dict(defaults)
    for key, value in saved.items():
        both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        out[key] = _merged(defaults[key], value) if both else value
    return out
