"""A family is new files only: one defined outside the package, named by its module in the config,
trains, checkpoints, resumes, evaluates and samples through the CLI; one dropped into
dul_jax/tasks/ is found by its file name."""

import json
import os
import sys
import textwrap

import jax
import numpy as np
import pytest

from dul_jax import cli
from dul_jax import config as config_lib
from dul_jax.data import DataSpec
from dul_jax.errors import UserError
from dul_jax.metrics import domain_classifier
from dul_jax.tasks import base
from dul_jax.train.run import Run

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, 'experiments', 'configs')

# Independent pixels: p(x) = prod_i Cat(x_i; softmax(theta_i)), the simplest exact likelihood.
FAMILY = textwrap.dedent('''
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from dul_jax.config import check
    from dul_jax.losses.likelihood import bits_per_dim, categorical_nll
    from dul_jax.tasks.base import LossOut, Task
    from dul_jax.tasks.capabilities import Bounds, Generates, SampleImages


    def default_model_config():
        m = ml_collections.ConfigDict()
        m.dtype = 'float32'
        m.init_scale = 0.01
        return m


    class PixelTable(nn.Module):
        dims: int
        levels: int
        init_scale: float

        @nn.compact
        def __call__(self, batch_size):
            logits = self.param('logits', nn.initializers.normal(self.init_scale),
                                (self.dims, self.levels))
            return jnp.broadcast_to(logits, (batch_size, self.dims, self.levels))


    class IndependentPixels(Task, Bounds, Generates, SampleImages):

        def validate(self):
            super().validate()
            self.require_images()
            check(self.cfg.model.init_scale >= 0, 'model.init_scale must be >= 0.')

        def build_model(self):
            return PixelTable(int(np.prod(self.spec.shape)), self.spec.num_levels,
                              self.cfg.model.init_scale)

        def example_size(self):
            return self.model.dims

        def init(self, rng, batch):
            return self.model.init(rng, batch['image'].shape[0])['params']

        def _nll(self, params, batch):
            logits = self.model.apply({'params': params}, batch['image'].shape[0])
            return categorical_nll(logits, batch['image'].reshape(logits.shape[:2]))

        def loss(self, params, batch, rng, ctx):
            loss = self._nll(params, batch).mean()
            return LossOut(loss, {'loss': loss})

        def eval_metrics(self, params, batch, rng):
            nll = self._nll(params, batch).sum(-1)
            return {'loss': nll / self.model.dims,
                    'bits_per_dim': bits_per_dim(nll, self.model.dims)}

        def bound_terms(self, params, batch, rng):  # exact: the bound is the NLL itself
            return {'nll': self._nll(params, batch).sum(-1)}

        def sample(self, params, rng, num):
            logits = self.model.apply({'params': params}, num)
            return {'samples': jax.random.categorical(rng, logits).reshape((num, *self.spec.shape))}

        def sample_images(self, params, rng, num):
            return self.sample(params, rng, num)['samples'].astype(jnp.uint8)

        def save_samples(self, outputs, path_stem):
            return [self.save_image_grid(outputs['samples'], path_stem + '.png')]


    TASK = IndependentPixels
''')

# The same family whose "samples" are the eval split itself: what a perfect generator would draw.
COPY_EVAL = textwrap.dedent('''
    import numpy as np

    from dul_jax import data
    from my_research.pixels import IndependentPixels


    class CopyEval(IndependentPixels):

        def sample_images(self, params, rng, num):
            batch = next(data.eval_batches(self.cfg.data, num, max_examples=num))
            return np.asarray(batch['image'])


    TASK = CopyEval
''')

CONFIG = textwrap.dedent('''
    from dul_jax.config import base_config
    from {module} import default_model_config


    def get_config():
        c = base_config()
        c.task = '{module}'
        c.data.name = 'digits'
        c.model = default_model_config()
        c.optim.lr = 0.5
        c.optim.schedule = 'constant'
        c.optim.weight_decay = 0.0
        c.optim.warmup_steps = 2
        c.train.steps = 20
        c.train.batch_size = 32
        c.train.log_every = 5
        c.train.eval_every = 0
        c.train.ckpt_every = 10
        c.eval.max_examples = 0
        c.sample.num = 8
        return c
''')


@pytest.mark.integration
def test_a_family_outside_the_package_runs_through_the_cli(tmp_path, tfds_dir, monkeypatch,
                                                           capsys):
    package = tmp_path / 'my_research'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'pixels.py').write_text(FAMILY)
    config = tmp_path / 'config.py'
    config.write_text(CONFIG.format(module='my_research.pixels'))
    monkeypatch.syspath_prepend(str(tmp_path))
    workdir = str(tmp_path / 'run')
    common = ['--config', str(config), '--workdir', workdir, f'--config.data.tfds_dir={tfds_dir}']

    assert cli.main(['train', *common, '--config.train.steps=10']) == 0
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', '10'))
    assert cli.main(['train', *common]) == 0          # resumes at 10, trains to 20
    assert 'resumed from' in capsys.readouterr().out
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        steps = [row['step'] for row in map(json.loads, f) if 'loss' in row]
    assert steps == [5, 10, 15, 20]
    # the shared bound evaluator over the whole eval split agrees with the per-example metrics
    assert cli.main(['eval', '--workdir', workdir, "--config.eval.evaluators=('bound',)",
                     '--config.eval.bound.examples=0']) == 0
    with open(os.path.join(workdir, 'eval_step_000020.json')) as f:
        evaluated = json.load(f)
    # 17 gray levels: a uniform model costs log2(17) = 4.09 bits/dim; per-pixel frequencies of
    # digits (mostly background) cost far less
    assert evaluated['bits_per_dim'] < 3.0
    assert evaluated['bound_bits_per_dim'] == pytest.approx(evaluated['bits_per_dim'], rel=1e-5)
    assert evaluated['bound_nll_bpd'] == pytest.approx(evaluated['bits_per_dim'], rel=1e-5)
    assert evaluated['bound_examples'] == 297
    # an evaluator the family has no capability for is refused before anything runs
    capsys.readouterr()
    assert cli.main(['eval', '--workdir', workdir, "--config.eval.evaluators=('probe',)"]) == 2
    assert 'gives no features (Task.features)' in capsys.readouterr().err
    assert cli.main(['sample', '--workdir', workdir, '--num', '4']) == 0
    scores = {}
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_000020.png'))
    # the shared FID evaluator: a "sampler" that returns the eval split itself scores 0 and full
    # precision and recall; independent pixels score far worse
    classifier = str(tmp_path / 'classifier')
    cfg = config_lib.load_config(str(config), [f'data.tfds_dir={tfds_dir}'])
    _, params, info = domain_classifier.train_classifier(cfg.data, steps=30, batch_size=64)
    domain_classifier.save(classifier, params, info)
    (package / 'copy_eval.py').write_text(COPY_EVAL)
    fid_args = ['eval', '--workdir', workdir, "--config.eval.evaluators=('fid',)",
                f'--config.eval.fid.classifier={classifier}']
    for task, name in (('my_research.pixels', 'pixels'), ('my_research.copy_eval', 'copy')):
        assert cli.main([*fid_args, f'--config.task={task}']) == 0
        with open(os.path.join(workdir, 'eval_step_000020.json')) as f:
            scores[name] = json.load(f)
    assert scores['copy']['fid'] == pytest.approx(0.0, abs=1e-3)
    assert scores['copy']['fid_precision'] == scores['copy']['fid_recall'] == 1.0
    assert scores['pixels']['fid'] > 10 * max(scores['pixels']['fid_real'], 1e-3)
    assert scores['pixels']['fid_examples'] == 297
    # the classes the classifier sees in the samples, and the share that are the ones asked for
    test_x, test_y = domain_classifier.load_split(cfg.data, 'test')
    model, classifier_params, _ = domain_classifier.load(classifier)
    seen = domain_classifier.apply_in_batches(model, classifier_params, test_x, 17)[0].argmax(-1)
    wrong = (test_y + 1) % 10
    for labels in (test_y, wrong):
        scored = domain_classifier.score(classifier, cfg.data, test_x, labels=labels)['samples']
        assert scored['label_accuracy'] == pytest.approx(np.mean(seen == labels))
        assert scored['class_histogram'] == np.bincount(seen, minlength=10).tolist()
    # the config names a module that has no TASK: one sentence, status 2
    (package / 'empty.py').write_text('')
    config.write_text(CONFIG.format(module='my_research.empty').replace(
        'from my_research.empty import default_model_config', 'import ml_collections').replace(
        'default_model_config()', 'ml_collections.ConfigDict()'))
    assert cli.main(['train', '--config', str(config), '--workdir', str(tmp_path / 'w2')]) == 2
    assert 'defines no TASK' in capsys.readouterr().err


def test_a_family_file_in_the_tasks_folder_is_found_by_name(tmp_path, monkeypatch):
    # a second folder on the package's path stands for dul_jax/tasks/: the source tree is left
    # alone (other workers read it)
    import dul_jax.tasks
    name = 'zz_test_independent_pixels'
    (tmp_path / f'{name}.py').write_text(FAMILY)
    monkeypatch.setattr(dul_jax.tasks, '__path__', [*dul_jax.tasks.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, f'dul_jax.tasks.{name}', raising=False)
    assert name in base.builtin_families() and 'vae' in base.builtin_families()
    assert base.task_class(name).__name__ == 'IndependentPixels'
    monkeypatch.delitem(sys.modules, f'dul_jax.tasks.{name}')
    with pytest.raises(UserError, match='unknown task "no_such_family"'):
        base.task_class('no_such_family')


def test_families_name_exactly_the_capabilities_they_define(tmp_path, monkeypatch):
    from dul_jax.tasks import capabilities
    for name in base.builtin_families():
        cls = base.task_class(name)
        for capability in capabilities.CAPABILITIES:
            (method,) = capabilities.members(capability)
            defined = any(method in vars(c) for c in cls.__mro__ if c is not capability)
            assert (capability in cls.__mro__) == defined, (name, capability.__name__)
    # a family that names a capability without defining it is refused when it loads
    (tmp_path / 'half_pkg').mkdir()
    (tmp_path / 'half_pkg' / '__init__.py').write_text('')
    (tmp_path / 'half_pkg' / 'family.py').write_text(textwrap.dedent('''
        from dul_jax.tasks.base import Task
        from dul_jax.tasks.capabilities import Features

        class Half(Task, Features):
            pass

        TASK = Half
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r'^task Half names capabilities it does not define '
                                        r'\(Features.features\); define them or drop them'):
        base.task_class('half_pkg.family')


def test_a_run_offers_what_its_family_can_do():
    """Run.sample needs a family that generates, Run.pictures one that makes pictures of
    examples, Run.model one with a single module; each refusal says what to use instead. A GAN's
    modules are its players, named as its param groups, with nothing kept beside them."""
    spec = DataSpec('digits', 'image', (8, 8, 1), 17, 10, None, 'train', 'test', 1500, 297)
    runs = {}
    for name in ('mae', 'gan'):
        cfg = config_lib.load_config(os.path.join(CONFIGS, f'{name}_digits.py'))
        runs[name] = Run(cfg, spec, base.make_task(cfg, spec), None, 0, '', None)
    mae, gan = runs['mae'], runs['gan']
    with pytest.raises(UserError, match=r'^task "mae" does not generate \(no Generates '
                                        r'capability\); use Run.pictures\.$'):
        mae.sample(4)
    with pytest.raises(UserError, match=r'^task "gan" makes no pictures of examples \(no '
                                        r'Pictures capability\); use Run.sample\.$'):
        gan.pictures(4)
    assert mae.model is mae.models['model'] is mae.task.model
    batch = {'image': np.zeros((2, 8, 8, 1), np.uint8), 'label': np.zeros(2, np.int32)}
    groups = jax.eval_shape(gan.task.init, jax.random.key(0), batch)
    assert list(gan.models) == ['generator', 'discriminator'] and set(groups) == set(gan.models)
    with pytest.raises(UserError, match=r'^task "gan" has several modules \(generator, '
                                        r'discriminator\); use Run.models\[NAME\]\.$'):
        _ = gan.model
    assert not {'generator', 'discriminator', 'model'} & set(vars(gan.task))
