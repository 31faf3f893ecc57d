"""Image data sets that a program wrote as arrays: `data.name = 'arrays:/path/to/folder'`.

The folder holds `info.json` ({'num_levels', 'num_classes', 'shape', 'splits': {name: count},
'description'}) and one `SPLIT.npz` per split with 'image' (N, H, W, C) uint8 or uint16 levels
and 'label' (N,) int32. Splits are read whole into memory. This is how a first-stage model hands
its outputs to a second one, e.g. a VQ-VAE's code grids (levels = codes) to the autoregressive
prior (tasks/vqvae.py `export_codes`). Local folders only.
"""

import functools
import json
import os
import pathlib

import numpy as np

from dul_jax.errors import UserError

PREFIX = 'arrays:'
INFO = 'info.json'


def is_arrays(name: str) -> bool:
    return name.startswith(PREFIX)


def folder(name: str) -> pathlib.Path:
    path = name[len(PREFIX):]
    if not path:
        raise UserError(f"data.name {name!r} names no folder; write {PREFIX}/path/to/folder.")
    return pathlib.Path(path).expanduser()


def write(directory, splits: dict, num_levels: int, num_classes: int = 0,
          description: str = '') -> dict:
    """Write `splits` ({name: (images (N, H, W, C) ints in [0, num_levels), labels (N,))}) as an
    arrays data set in `directory`; returns its info. uint8 where num_levels <= 256, else uint16."""
    if not 2 <= num_levels <= 65536:
        raise ValueError(f'num_levels must be in [2, 65536], got {num_levels}')
    dtype = np.uint8 if num_levels <= 256 else np.uint16
    path = pathlib.Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    shapes = {tuple(images.shape[1:]) for images, _ in splits.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f'every split needs images of one (H, W, C) shape, got {shapes}')
    for split, (images, labels) in splits.items():
        images = np.asarray(images)
        if images.size and (images.min() < 0 or images.max() >= num_levels):
            raise ValueError(f'split {split} has levels outside [0, {num_levels})')
        tmp = path / f'{split}.tmp.npz'
        np.savez(tmp, image=images.astype(dtype), label=np.asarray(labels, np.int32))
        os.replace(tmp, path / f'{split}.npz')
    info = {'num_levels': int(num_levels), 'num_classes': int(num_classes),
            'shape': list(next(iter(shapes))),
            'splits': {split: len(images) for split, (images, _) in splits.items()},
            'description': description}
    (path / INFO).write_text(json.dumps(info, indent=2) + '\n')
    return info


def info(name: str) -> dict:
    path = folder(name) / INFO
    if not path.is_file():
        raise UserError(f'{folder(name)} holds no {INFO}, so it is no arrays data set; point '
                        f'data.name at a folder that an export (e.g. a VQ-VAE\'s codes) wrote.')
    return json.loads(path.read_text())


@functools.cache
def _load(path: pathlib.Path, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f['image'], f['label']


def split_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split, read whole (cached until the file changes)."""
    path = folder(name) / f'{split}.npz'
    if not path.is_file():
        raise UserError(f'arrays data set {name!r} has no split {split!r} ({path} is missing).')
    return _load(path.resolve(), path.stat().st_mtime_ns)
