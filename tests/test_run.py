"""A workdir stands on its own: the kept data spec serves sample, compress and `load_run` with
the data set out of reach; `dul-jax export` writes the exact eval params to a portable file."""

import os
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import DEMO, REPO, tiny_overrides

import dul_jax
from dul_jax import cli, data
from dul_jax import compress as compress_lib
from dul_jax import config as config_lib
from dul_jax.data import DataSpec, pipeline, sources
from dul_jax.errors import UserError
from dul_jax.models.gpt import shift_right
from dul_jax.train import loop
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.setup import prepare
from dul_jax.train.workdir import kept_spec

CHAR_CONFIG = os.path.join(REPO, 'experiments', 'configs', 'tiny_shakespeare_char.py')
# every test trains a run first (the module's image_run, or a char run)
pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def image_run(tmp_path_factory, tfds_dir):
    """An unconditional tiny iGPT on digits after 6 steps with an EMA (so eval params are not
    the params), trained by the loop: the workdir as `dul-jax train` leaves it."""
    workdir = str(tmp_path_factory.mktemp('run'))
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 6, 'model.class_conditional': False, 'optim.ema_decay': 0.9}))
    loop.train(cfg, workdir)
    return workdir, cfg


def _hide_the_data(monkeypatch, tmp_path, workdir):
    """The run's config pointed at empty folders, and describe() refusing to be called: whatever
    still works needs no data set."""
    def no_describe(data_cfg):
        raise AssertionError('describe() was called')
    monkeypatch.setattr(sources, 'describe', no_describe)
    monkeypatch.setattr(pipeline, 'describe', no_describe)
    empty = [tmp_path / 'no_data', tmp_path / 'no_tfds']
    for folder in empty:
        folder.mkdir()
    cfg = loop.load_config_of(workdir, [f'data.dir={empty[0]}', f'data.tfds_dir={empty[1]}'])
    return cfg, empty


def test_data_spec_is_kept_and_round_trips(image_run):
    workdir, cfg = image_run
    with open(os.path.join(workdir, 'data_spec.json')) as f:
        kept = DataSpec.from_json(f.read())
    assert kept == data.describe(cfg.data) and isinstance(kept.shape, tuple)
    chars = DataSpec('t', 'text', (16,), 4, 0, 'a\n\u00e9"', 'train', 'validation', 10, 5)
    assert DataSpec.from_json(chars.to_json()) == chars
    with pytest.raises(TypeError):
        DataSpec.from_json('[1, 2]')


def test_sample_compress_and_load_run_without_the_data(image_run, tmp_path, monkeypatch):
    workdir, _ = image_run
    cfg, empty = _hide_the_data(monkeypatch, tmp_path, workdir)
    paths = loop.sample_command(cfg, workdir, num=4, seed=1)
    assert paths == [os.path.join(workdir, 'samples', 'step_000006.png')]

    images = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1), np.uint8)
    np.save(tmp_path / 'x.npy', images)
    for name, src, dst in (('compress', 'x.npy', 'x.dulz'), ('decompress', 'x.dulz', 'y.npy')):
        compress_lib.command(name, cfg, workdir, str(tmp_path / src), str(tmp_path / dst))
    np.testing.assert_array_equal(np.load(tmp_path / 'y.npy'), images)

    run = dul_jax.load_run(workdir)
    assert run.step == 6 and run.spec.shape == (8, 8, 1) and run.model is run.task.model
    outputs = run.sample(4, seed=1)
    samples = outputs['samples']
    assert list(outputs) == ['samples'] and isinstance(samples, np.ndarray)
    assert samples.shape == (4, 8, 8, 1) and 0 <= samples.min() and samples.max() < 17
    np.testing.assert_array_equal(run.sample(4, seed=1)['samples'], samples)
    # the notebook's samples are the command's: the same key, the same picture
    run.task.save_samples(outputs, str(tmp_path / 'mine'))
    assert (tmp_path / 'mine.png').read_bytes() == pathlib.Path(paths[0]).read_bytes()
    assert all(not os.listdir(folder) for folder in empty)   # nothing was prepared


def test_evaluate_matches_the_eval_loop_and_refuses_bad_batches(image_run):
    workdir, cfg = image_run
    run = dul_jax.load_run(workdir)
    batch = run.eval_examples(64)
    cfg = cfg.copy_and_resolve_references()
    cfg.eval.batch_size = 64
    setup = prepare(cfg)
    state = restore_state(os.path.join(workdir, 'checkpoints'), setup.abstract_state())
    expected = loop.evaluate(setup, state, max_examples=64)
    got = run.evaluate(batch)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5)
    assert run.bits_per_dim(batch) == got['bits_per_dim'] > 0
    # half the rows masked out is the mean over the other half
    half = dict(batch, mask=(np.arange(64) < 32).astype(np.float32))
    assert run.evaluate(half)['loss'] == pytest.approx(
        run.evaluate({'image': batch['image'][:32]})['loss'], rel=1e-5)
    for bad, match in (({'tokens': batch['image']}, 'is a dict with "image"'),
                       ({'image': batch['image'][:, :4]}, r'has shape \(64, 4, 8, 1\)'),
                       ({'image': batch['image'] + 17}, r'integers in \[0, 17\)')):
        with pytest.raises(UserError, match=match):
            run.evaluate(bad)


def test_kept_spec_falls_back_on_describe(image_run, tmp_path, monkeypatch):
    workdir, _ = image_run
    calls = []
    monkeypatch.setattr(sources, 'describe', lambda data_cfg: calls.append(data_cfg) or 'described')
    cfg = loop.load_config_of(workdir)
    assert isinstance(kept_spec(cfg, workdir), DataSpec) and not calls
    # an override of a key the spec follows from: the kept one no longer applies
    assert kept_spec(loop.load_config_of(workdir, ['data.num_levels=9']), workdir) == 'described'
    # a workdir from before data_spec.json
    old = tmp_path / 'old'
    old.mkdir()
    (old / 'config.json').write_text(config_lib.to_json(cfg))
    assert kept_spec(cfg, str(old)) == 'described' and len(calls) == 2
    (old / 'data_spec.json').write_text('{"name": "digits"}')
    with pytest.raises(UserError, match='is not a data spec'):
        kept_spec(cfg, str(old))


def test_export_is_the_exact_eval_params_and_loads_without_dul_jax(image_run, tmp_path, capsys):
    workdir, cfg = image_run
    out = tmp_path / 'run.msgpack'
    assert cli.main(['export', '--workdir', workdir, '--output', str(out)]) == 0
    assert 'step 6:' in capsys.readouterr().out
    exported = flax.serialization.msgpack_restore(out.read_bytes())   # plain flax, no orbax
    setup = prepare(cfg)
    state = jax.device_get(restore_state(os.path.join(workdir, 'checkpoints'),
                                         setup.abstract_state()))
    flat = jax.tree_util.tree_leaves_with_path
    assert [p for p, _ in flat(exported['params'])] == [p for p, _ in flat(state.ema_params)]
    for (_, x), (_, ema), (_, raw) in zip(flat(exported['params']), flat(state.ema_params),
                                          flat(state.params)):
        assert isinstance(x, np.ndarray) and x.dtype == ema.dtype
        np.testing.assert_array_equal(x, ema)
    assert any(not np.array_equal(e, r) for e, r in zip(jax.tree.leaves(state.ema_params),
                                                        jax.tree.leaves(state.params)))
    assert exported['step'] == 6
    assert config_lib.from_json(exported['config']).model.embed_dim == 32
    assert DataSpec.from_json(exported['data_spec']) == data.describe(cfg.data)
    for args, fragment in ((['--output', str(tmp_path / 'run.npz')], 'must end in .msgpack'),
                           (['--output', str(out), '--step', '3'], 'keeps no checkpoint of step 3'),
                           (['--output', str(tmp_path)], 'must end in')):
        assert cli.main(['export', '--workdir', workdir, *args]) == 2
        assert fragment in capsys.readouterr().err
    assert cli.main(['export', '--workdir', str(tmp_path), '--output', str(out)]) == 2
    assert 'no config.json' in capsys.readouterr().err


def test_char_run_samples_decode_with_the_kept_vocabulary(tmp_path, tfds_dir, shared_data,
                                                          monkeypatch):
    workdir = str(tmp_path / 'chars')
    cfg = config_lib.load_config(CHAR_CONFIG, tiny_overrides(tfds_dir, **{
        'data.seq_len': 16, 'train.steps': 2, 'eval.max_examples': 16, 'sample.num': 2}))
    loop.train(cfg, workdir)
    vocab = data.describe(cfg.data).vocab
    cfg, _ = _hide_the_data(monkeypatch, tmp_path, workdir)
    [path] = loop.sample_command(cfg, workdir, num=3, seed=2)
    run = dul_jax.load_run(workdir)
    assert run.spec.vocab == vocab and len(vocab) == 65
    tokens = run.sample(3, seed=2)['samples']
    assert tokens.shape == (3, 16) and tokens.max() < 65
    texts = [data.decode_text(t, run.spec) for t in tokens]
    assert all(len(t) == 16 and set(t) <= set(vocab) for t in texts)
    with open(path) as f:
        assert f.read() == ''.join(f'===== sample {i} =====\n{t}\n' for i, t in enumerate(texts))
    # a prompt is every sample's start; greedy (top_k 1) continuations through the KV cache are
    # the argmax of the full forward pass over the same tokens, position by position
    greedy = dul_jax.load_run(workdir, overrides=['sample.prompt=ROMEO:', 'sample.top_k=1'])
    out = greedy.sample(2, seed=0)['samples']
    prompt = data.encode_text('ROMEO:', run.spec)
    assert (out[:, :6] == prompt).all() and (out[0] == out[1]).all()
    logits = greedy.model.apply({'params': greedy.params},
                                shift_right(jnp.asarray(out[:1]), greedy.model.bos), None)
    np.testing.assert_array_equal(np.argmax(logits[0, 6:], -1), out[0, 6:])
    for bad, said in (('sample.prompt=ROMEO\u00e9', 'characters the model never saw'),
                      ('sample.prompt=' + 'a' * 16, 'is 16 tokens, but the model sees 16'),
                      ('sample.temperature=0.0', 'sample.temperature must be positive'),
                      ('sample.label=3', 'sample.label=3 needs a class-conditional model')):
        with pytest.raises(UserError, match=said):
            dul_jax.load_run(workdir, overrides=[bad])


def test_a_run_from_before_newer_config_keys_loads_with_their_defaults(image_run, tmp_path):
    """A config.json without keys that a later dul_jax added (here one model key and one
    evaluator block) gets their defaults; its own values stay."""
    import json
    import shutil
    workdir, _ = image_run
    old = tmp_path / 'old_run'
    shutil.copytree(workdir, old)
    saved = json.loads((old / 'config.json').read_text())
    del saved['model']['dropout'], saved['eval']['fid']
    saved['model']['num_layers'] = 7
    (old / 'config.json').write_text(json.dumps(saved))
    cfg = loop.load_config_of(str(old))
    assert cfg.model.dropout == 0.0 and cfg.eval.fid.num == 0 and cfg.model.num_layers == 7


def test_sample_label_fixes_every_conditional_sample_and_a_prompt_needs_text():
    from dul_jax.tasks.base import make_task
    spec = DataSpec('digits', 'image', (8, 8, 1), 17, 10, None, 'train', 'test', 1500, 297)
    cfg = config_lib.load_config(DEMO, ['sample.label=7'])
    assert make_task(cfg, spec).sample_labels(4).tolist() == [7, 7, 7, 7]
    cfg = config_lib.load_config(DEMO)
    assert make_task(cfg, spec).sample_labels(12).tolist() == [*range(10), 0, 1]
    for bad, said in (('sample.label=10', r'a class in \[0, 10\)'),
                      ('sample.prompt=once', 'sample.prompt is for text models')):
        with pytest.raises(UserError, match=said):
            make_task(config_lib.load_config(DEMO, [bad]), spec)
