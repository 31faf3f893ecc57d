"""examples/load_and_sample.ipynb runs top to bottom on a freshly trained run and reports the
bits/dim the trainer's own final eval measured on the same examples."""

import json
import os
import re

import nbclient
import nbformat
import pytest
from test_train import DEMO, REPO, tiny_overrides

from dul_jax import config as config_lib
from dul_jax.train import loop

NOTEBOOK = os.path.join(REPO, 'examples', 'load_and_sample.ipynb')


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.integration
def test_notebook_loads_samples_and_scores_a_run(tmp_path, tfds_dir, monkeypatch):
    workdir = str(tmp_path / 'run')
    # the final eval covers exactly the 64 examples the notebook scores
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 6, 'optim.ema_decay': 0.9, 'eval.max_examples': 64}))
    loop.train(cfg, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        final = [r for r in map(json.loads, f) if 'eval/bits_per_dim' in r][-1]
    monkeypatch.setenv('DUL_JAX_RUN', workdir)
    # the kernel imports this checkout's dul_jax, with the test's JAX settings (os.environ)
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    assert 'autoregressive on digits (8, 8, 1), checkpoint step 6' in text
    assert any('image/png' in o.get('data', {}) for o in outputs)   # the sample grid
    printed = float(re.search(r'bits/dim on the first 64 eval examples: (\S+)', text).group(1))
    # one device here, eight in the trainer: the sums may differ in the last float bits
    assert printed == pytest.approx(final['eval/bits_per_dim'], rel=1e-5)
