"""FLOP and parameter accounting: the analytic Transformer count against XLA's own count."""

import os

import jax
import jax.numpy as jnp
import pytest

from dul_jax import model_configs
from dul_jax.accounting import count_params, transformer_flops_per_token, xla_flops
from dul_jax.config import base_config
from dul_jax.data import DataSpec
from dul_jax.train import mfu
from dul_jax.train.setup import prepare
from dul_jax.train.state import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = DataSpec(name='synthetic', kind='text', shape=(64,), num_levels=256, num_classes=0,
                vocab=None, train_split='train', eval_split='validation', num_train=0, num_eval=0)


def gpt_setup(num_layers=3, embed_dim=64):
    cfg = base_config()
    cfg.data.seq_len = 64
    cfg.model = model_configs.autoregressive()
    cfg.model.update(num_layers=num_layers, num_heads=4, embed_dim=embed_dim,
                     mlp_dim=4 * embed_dim, scan_unroll=num_layers)
    cfg.train.batch_size = 8
    return prepare(cfg, devices=jax.devices()[:1], spec=SPEC)


def test_parameter_counts_by_hand():
    setup = gpt_setup(num_layers=2, embed_dim=64)
    params = jax.eval_shape(setup.task.init, jax.random.key(0), setup.dummy_batch())
    params = jax.tree.map(lambda b: b.value if hasattr(b, 'value') else b, params)
    d, L, V, T = 64, 2, 256, 64
    block = 4 * d * d + 4 * d + 2 * d * 4 * d + 4 * d + d + 4 * d   # attn, mlp, 2 LayerNorms
    head = d * V + V + 2 * d                                         # head and final LayerNorm
    embeddings = (V + 1) * d + T * d                         # tokens (+ start) and positions
    assert count_params(params, setup.task.embedding_names) == embeddings
    assert count_params(params) == L * block + head + embeddings


@pytest.mark.parametrize('num_layers,embed_dim', [(2, 64), (4, 128)])
def test_analytic_training_flops_match_xla_within_10_percent(num_layers, embed_dim):
    setup = gpt_setup(num_layers, embed_dim)
    state = setup.abstract_state()
    analytic, source = mfu.model_flops_per_step(setup, state, setup.cfg.train.batch_size)
    assert source == 'analytic'
    step = make_train_step(setup.task, setup.tx, setup.schedule, 0.0)
    counted = xla_flops(jax.jit(step).lower(state, setup.dummy_batch(8)))
    matmul = count_params(state.params) - count_params(state.params, setup.task.embedding_names)
    assert analytic == 8 * 64 * transformer_flops_per_token(matmul, num_layers, 64, embed_dim)
    assert abs(counted - analytic) / analytic < 0.10, (counted, analytic)


def test_xla_counts_a_scanned_stack_body_once():
    """Why the analytic count is the one to trust for scanned stacks (documented in mfu.py)."""
    unrolled, scanned = gpt_setup(4, 64), gpt_setup(4, 64)
    scanned.cfg.model.scan_unroll = 1
    scanned = prepare(scanned.cfg, devices=jax.devices()[:1], spec=SPEC)
    counts = []
    for setup in (unrolled, scanned):
        state = setup.abstract_state()
        step = make_train_step(setup.task, setup.tx, setup.schedule, 0.0)
        counts.append(xla_flops(jax.jit(step).lower(state, setup.dummy_batch(8))))
    assert counts[1] < 0.5 * counts[0]
    assert jnp.isfinite(counts[1])


def test_no_mfu_where_xla_counts_no_flops(monkeypatch):
    """A task without an analytic count falls back to XLA's analysis; where that reports nothing
    (a DiT step on GPU did), the count is None, not a zero that would read as 0% MFU."""
    setup = gpt_setup(1, 32)
    monkeypatch.setattr(setup.task, 'flops_per_example', lambda params: None)
    state = setup.abstract_state()
    flops, source = mfu.model_flops_per_step(setup, state, 8)
    assert source == 'xla' and flops > 0
    monkeypatch.setattr(mfu, 'xla_flops', lambda lowered: 0.0)
    flops, source = mfu.model_flops_per_step(setup, state, 8)
    assert flops is None and source.startswith('unknown')


def test_scanned_dit_is_counted_unrolled():
    """The trainer's FLOPs (and so its MFU) for a scanned DiT equal the unrolled model's."""
    from dul_jax.config import load_config
    counts = []
    for unroll in (1, 0):
        cfg = load_config(os.path.join(REPO, 'experiments', 'configs', 'dit_digits.py'))
        cfg.model.update(embed_dim=16, mlp_dim=32, num_heads=2, num_layers=3,
                         scan_unroll=unroll)
        setup = prepare(cfg, devices=jax.devices()[:1])
        counts.append(mfu.model_flops_per_step(setup, setup.abstract_state(), 4))
    assert counts[0] == counts[1] and counts[0][1] == 'xla'
