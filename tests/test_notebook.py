"""examples/load_and_sample.ipynb runs top to bottom on a freshly trained run and reports the
bits/dim the trainer's own final eval measured on the same examples; it finds the repository's
runs/demo from the folder Jupyter starts it in, says how to make the run where there is none, and
is committed with the outputs of a real demo run."""

import json
import os
import re
import shutil

import nbclient
import nbformat
import pytest
from test_train import DEMO, REPO, tiny_overrides

from dul_jax import config as config_lib
from dul_jax.train import loop

NOTEBOOK = os.path.join(REPO, 'examples', 'load_and_sample.ipynb')


def test_the_committed_notebook_shows_a_real_runs_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    assert 'autoregressive on digits (8, 8, 1), checkpoint step 800' in text   # `make demo`'s
    assert any('image/png' in o.get('data', {}) for o in outputs)
    assert 1.0 < float(re.search(r'bits/dim on the first 64 eval examples: (\S+)', text)[1]) < 2.5
    assert '/work/' not in json.dumps(nb) and '/home/' not in json.dumps(nb)   # no local paths


def _execute(nb, folder, monkeypatch):
    """Run `nb` with the kernel started in `folder`, importing this checkout's dul_jax with the
    test's JAX settings (os.environ); its outputs."""
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3', allow_errors=True,
                                     resources={'metadata': {'path': str(folder)}})
    client.execute()
    return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]


@pytest.mark.integration
def test_notebook_loads_samples_and_scores_a_run(tmp_path, tfds_dir, monkeypatch):
    workdir = str(tmp_path / 'run')
    # the final eval covers exactly the 64 examples the notebook scores
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 6, 'optim.ema_decay': 0.9, 'eval.max_examples': 64}))
    loop.train(cfg, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        final = [r for r in map(json.loads, f) if 'eval/bits_per_dim' in r][-1]
    # as Jupyter starts it: the kernel in the notebook's folder of a checkout with runs/demo
    checkout = tmp_path / 'checkout'
    (checkout / 'examples').mkdir(parents=True)
    (checkout / 'pyproject.toml').write_text('')
    (checkout / 'runs').mkdir()
    os.symlink(workdir, checkout / 'runs' / 'demo')
    monkeypatch.delenv('DUL_JAX_RUN', raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = _execute(nb, checkout / 'examples', monkeypatch)
    assert not [o for o in outputs if o.output_type == 'error']
    text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    assert 'autoregressive on digits (8, 8, 1), checkpoint step 6' in text
    assert any('image/png' in o.get('data', {}) for o in outputs)   # the sample grid
    printed = float(re.search(r'bits/dim on the first 64 eval examples: (\S+)', text).group(1))
    # one device here, eight in the trainer: the sums may differ in the last float bits
    assert printed == pytest.approx(final['eval/bits_per_dim'], rel=1e-5)

    # no run there: the first cell says in plain words how to make one
    shutil.rmtree(checkout / 'runs')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:2]
    [error] = [o for o in _execute(nb, checkout / 'examples', monkeypatch)
               if o.output_type == 'error']
    assert error.ename == 'SystemExit'
    assert error.evalue == (f'No trained run in {checkout}/runs/demo. Train the demo with `make '
                            f'demo` in {checkout} (a few minutes), or set DUL_JAX_RUN to the '
                            'folder of a run.')
