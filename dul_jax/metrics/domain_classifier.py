"""Train, save and load the classifier whose features define a data set's "domain FID".

The classifier is trained on the train split of the same data set the generative model learns;
its params are saved as DIR/classifier.msgpack with DIR/classifier.json (what it was trained on,
its test accuracy), so every run on that data set is scored with the same features.
"""

import json
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dul_jax import data
from dul_jax.errors import UserError
from dul_jax.losses.gaussian import levels_to_unit
from dul_jax.losses.likelihood import categorical_nll
from dul_jax.models.classifier import ConvClassifier


def load_split(data_cfg, split: str, max_examples: int | None = None):
    """(images uint8 (N, H, W, C), labels int32 (N,)) of a whole split, in stored order."""
    imgs, labels = [], []
    for batch in data.eval_batches(data_cfg, 256, max_examples, split=split):
        keep = batch['mask'] > 0
        imgs.append(batch['image'][keep])
        labels.append(batch['label'][keep])
    return np.concatenate(imgs), np.concatenate(labels).astype(np.int32)


def train_classifier(data_cfg, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, width: int = 32):
    """Adam on the cross-entropy of the train split, with random shifts of up to 1/8 of the image
    (so the features do not hinge on exact positions). Returns (model, params, info)."""
    spec = data.describe(data_cfg)
    if not spec.is_image or spec.num_classes == 0:
        raise UserError(f'the domain classifier needs labelled images, and "{spec.name}" has '
                        'none; set --data to a labelled image data set such as digits.')
    train_x, train_y = load_split(data_cfg, spec.train_split)
    test_x, test_y = load_split(data_cfg, spec.eval_split)
    model = ConvClassifier(spec.num_classes, width=width)
    to_unit = lambda x: levels_to_unit(jnp.asarray(x), spec.num_levels)
    params = nn.meta.unbox(model.init(jax.random.key(seed), to_unit(train_x[:1]))['params'])
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = tx.init(params)
    shift = max(1, spec.shape[0] // 8)

    @jax.jit
    def step(params, opt_state, x, y, rng):
        x = to_unit(x)
        dy, dx = jax.random.randint(rng, (2,), -shift, shift + 1)
        x = jnp.roll(x, (dy, dx), axis=(1, 2))

        def loss_fn(p):
            return categorical_nll(model.apply({'params': p}, x)[0], y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    for i in range(steps):
        idx = rng.integers(0, len(train_x), batch_size)
        params, opt_state, loss = step(params, opt_state, train_x[idx], train_y[idx],
                                       jax.random.fold_in(key, i))
    logits, _ = apply_in_batches(model, params, test_x, spec.num_levels)
    info = {'data': spec.name, 'num_levels': spec.num_levels, 'shape': list(spec.shape),
            'num_classes': spec.num_classes, 'width': width, 'steps': steps,
            'final_train_loss': float(loss),
            'test_accuracy': float((logits.argmax(-1) == test_y).mean())}
    return model, params, info


def apply_in_batches(model, params, images, num_levels: int, batch: int = 500):
    """(logits, features) as numpy for uint8 level images, `batch` at a time."""
    fn = jax.jit(lambda p, x: model.apply({'params': p}, levels_to_unit(x, num_levels)))
    outs = [fn(params, jnp.asarray(images[i:i + batch])) for i in range(0, len(images), batch)]
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(2))


def save(directory: str, params, info: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'classifier.msgpack'), 'wb') as f:
        f.write(flax.serialization.to_bytes(params))
    with open(os.path.join(directory, 'classifier.json'), 'w') as f:
        json.dump(info, f, indent=2)


def load(directory: str):
    """(model, params, info) saved by `save`."""
    path = os.path.join(directory, 'classifier.json')
    if not os.path.isfile(path):
        raise UserError(f'{directory} holds no trained classifier; train one with '
                        '`python experiments/domain_fid.py train-classifier`.')
    with open(path) as f:
        info = json.load(f)
    model = ConvClassifier(info['num_classes'], width=info['width'])
    dummy = jnp.zeros((1,) + tuple(info['shape']), jnp.float32)
    template = nn.meta.unbox(model.init(jax.random.key(0), dummy)['params'])
    with open(os.path.join(directory, 'classifier.msgpack'), 'rb') as f:
        params = flax.serialization.from_bytes(template, f.read())
    return model, params, info


def gaussian_samples(train_images: np.ndarray, num: int, num_levels: int, seed: int = 0):
    """The weak baseline generator: a full-covariance Gaussian fitted to the training pixels,
    sampled and rounded to the nearest level."""
    flat = train_images.reshape(len(train_images), -1).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False), size=num,
                                    method='eigh')
    levels = np.clip(np.round(draws), 0, num_levels - 1).astype(np.uint8)
    return levels.reshape((num,) + train_images.shape[1:])


def score(classifier_dir: str, data_cfg, samples: np.ndarray, seed: int = 0,
          labels: np.ndarray | None = None) -> dict:
    """Domain FID, precision and recall of `samples` (uint8 levels) against the eval split, beside
    two baselines with as many images: held-out real images (a random subset of the train split:
    the best a generator can do at this sample size) and the Gaussian of `gaussian_samples`.
    Each also gets the histogram of the classes the classifier sees in it (mode collapse shows
    there) and, given the `labels` the samples were drawn for, the share classified as them."""
    from dul_jax.metrics import fid
    model, params, info = load(classifier_dir)
    spec = data.describe(data_cfg)
    if info['data'] != spec.name or tuple(info['shape']) != tuple(samples.shape[1:]):
        raise UserError(f'the classifier in {classifier_dir} was trained on {info["data"]} '
                        f'{info["shape"]}, not {spec.name} {list(samples.shape[1:])}; train one '
                        'on this data set.')
    num = len(samples)
    test_x, _ = load_split(data_cfg, spec.eval_split, num)
    if len(test_x) < num:
        raise UserError(f'the eval split has {len(test_x)} images, fewer than the {num} samples; '
                        f'score at most {len(test_x)}.')
    train_x, _ = load_split(data_cfg, spec.train_split)
    real = train_x[np.random.default_rng(seed).choice(len(train_x), num, replace=False)]
    reference = apply_in_batches(model, params, test_x, spec.num_levels)[1]
    result = {'num': num, 'classifier_test_accuracy': info['test_accuracy']}
    for name, images in (('real', real), ('samples', samples),
                         ('gaussian', gaussian_samples(train_x, num, spec.num_levels, seed))):
        logits, f = apply_in_batches(model, params, images, spec.num_levels)
        precision, recall = fid.precision_recall(reference, f)
        classes = logits.argmax(-1)
        result[name] = {'fid': fid.frechet_distance_of(reference, f), 'precision': precision,
                        'recall': recall, 'class_histogram': np.bincount(
                            classes, minlength=info['num_classes']).tolist()}
        if name == 'samples' and labels is not None:
            result[name]['label_accuracy'] = float(np.mean(classes == np.asarray(labels)))
    return result
