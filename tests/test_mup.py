"""µP (train/mup.py): each parameter's role from the base-width model's shapes, the Adam learning
rates and readout init it implies, the standard parametrization at the base width, and the
coordinate check (what a few steps change does not grow with width under µP, and does under the
standard parametrization)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_compiles

from dul_jax import config as config_lib
from dul_jax.data import DataSpec
from dul_jax.errors import UserError
from dul_jax.models.gpt import shift_right
from dul_jax.train import mup
from dul_jax.train.setup import prepare

DIGITS = DataSpec('digits', 'image', (8, 8, 1), 17, 10, None, 'train', 'test', 1500, 297)


@pytest.fixture(autouse=True, scope='module')
def _quick():
    with quick_compiles():
        yield


def _cfg(width, base, **extra):
    items = {'model.embed_dim': width, 'model.mlp_dim': 4 * width, 'model.num_heads': width // 16,
             'model.num_layers': 2, 'model.dropout': 0.0, 'model.class_conditional': False,
             'model.mup_base_width': base, 'optim.warmup_steps': 0, 'optim.schedule': 'constant',
             'optim.lr': 1e-2, 'optim.ema_decay': 0.0, 'optim.weight_decay': 0.0,
             'optim.clip_norm': 0.0, 'train.batch_size': 16, **extra}
    return config_lib.load_config('demo', [f'{k}={v}' for k, v in items.items()])


def test_roles_come_from_the_base_width_shapes():
    setup = prepare(_cfg(64, 16), spec=DIGITS)
    roles = setup.mup_roles
    hidden = {n for n, r in roles.items() if r == mup.HIDDEN}
    assert {n.split("']['")[-1].rstrip("']") for n in hidden} == {
        'query_kernel', 'key_kernel', 'value_kernel', 'out_kernel', 'kernel'}
    assert all("['stack']" in n for n in hidden)
    assert [n for n, r in roles.items() if r == mup.READOUT] == ["['head']['kernel']"]
    others = {n for n, r in roles.items() if r == mup.OTHER}
    assert {"['tok_embed']['embedding']", "['pos_embed']", "['head']['bias']"} <= others
    assert any(n.endswith("['query_bias']") for n in others)


def test_adam_steps_and_readout_init_scale_by_width_and_the_base_width_is_standard():
    key = jax.random.key(0)
    sp, mu, at_base = (prepare(_cfg(64, b), spec=DIGITS) for b in (0, 16, 64))
    p_sp, p_mu = (jax.device_get(s.init_state(0).params) for s in (sp, mu))
    # init: the readout is 1/sqrt(4) of the standard one; everything else is the same values
    np.testing.assert_allclose(p_mu['head']['kernel'], p_sp['head']['kernel'] / 2, rtol=1e-6)
    np.testing.assert_array_equal(p_mu['stack']['blocks']['mlp']['fc']['kernel'],
                                  p_sp['stack']['blocks']['mlp']['fc']['kernel'])
    assert set(at_base.mup_roles.values()) == {mup.OTHER}   # at the base width nothing grows
    unscaled = mup.scale_init(p_sp, mu.mup_roles, 1.0)       # and m = 1 scales nothing
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, unscaled, p_sp)))
    # one Adam step on the same gradients: hidden and readout updates are 1/4, others equal
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape, p.dtype), p_sp)

    def first_update(setup):
        return jax.device_get(jax.jit(lambda g, p: setup.tx.update(g, setup.tx.init(p), p)[0])(
            grads, p_sp))
    u_sp, u_mu, u_base = (first_update(s) for s in (sp, mu, at_base))
    by_path = dict(jax.tree_util.tree_flatten_with_path(u_mu)[0])
    for path, a in jax.tree_util.tree_flatten_with_path(u_sp)[0]:
        name = jax.tree_util.keystr(path)
        ratio = 0.25 if mu.mup_roles[name] in (mup.HIDDEN, mup.READOUT) else 1.0
        np.testing.assert_allclose(by_path[path], a * ratio, rtol=1e-6, err_msg=name)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, u_base, u_sp)))


def test_a_width_the_base_cannot_scale_to_is_refused():
    with pytest.raises(UserError, match=r'model.num_heads=1 .* to 0.5, not a whole number'):
        prepare(_cfg(32, 16, **{'model.num_heads': 1}), spec=DIGITS)
    unet = config_lib.load_config('ddpm_unet_digits', ['model.mup_base_width=16'])
    with pytest.raises(UserError, match='task "diffusion" has no µP parametrization'):
        prepare(unet, spec=DIGITS)


def _logit_change(width, base, steps=3):
    """Mean |logits after `steps` steps - logits at init| on the training batch."""
    setup = prepare(_cfg(width, base), spec=DIGITS)
    rng = np.random.default_rng(0)
    batch = {'image': rng.integers(0, 17, (16, 8, 8, 1), dtype=np.int32),
             'label': rng.integers(0, 10, (16,), dtype=np.int32)}
    task = setup.task
    inputs = shift_right(task._tokens(batch), task.model.bos)

    def logits(params):
        return task.model.apply({'params': params}, inputs, None)
    state = setup.init_state(0)
    before = logits(jax.device_get(state.params))
    step = setup.train_step()
    for _ in range(steps):
        state, _ = step(state, setup.put_batch(batch))
    return float(jnp.abs(logits(jax.device_get(state.params)) - before).mean())


def test_coordinate_check_what_training_changes_does_not_grow_with_width_under_mup():
    sp = [_logit_change(w, 0) for w in (32, 128)]
    mu = [_logit_change(w, 32) for w in (32, 128)]
    assert sp[0] == pytest.approx(mu[0], rel=1e-5)   # the base width: the same run
    assert sp[1] > 1.5 * sp[0]    # standard: Adam's updates add up over 4x the fan-in
    assert mu[1] < 1.1 * mu[0]    # µP: they do not


@pytest.mark.parametrize('name, widths', [
    ('mae_digits', {'embed_dim': 64, 'mlp_dim': 256, 'num_heads': 4, 'decoder_embed_dim': 32,
                    'decoder_mlp_dim': 128, 'decoder_heads': 2}),
    ('dit_digits', {'embed_dim': 128, 'mlp_dim': 512, 'num_heads': 4})])
def test_mae_and_dit_have_one_readout_and_their_input_layers_keep_the_standard_rate(name, widths):
    overrides = [f'model.{k}={v}' for k, v in widths.items()]
    base = f'model.mup_base_width={widths["embed_dim"] // 2}'
    cfg = config_lib.load_config(name, [*overrides, base])
    roles = prepare(cfg, spec=DIGITS).mup_roles
    assert [n for n, r in roles.items() if r == mup.READOUT] == ["['head']['kernel']"]
    assert roles["['patch_embed']['proj']['kernel']"] == mup.OTHER
    assert sum(r == mup.HIDDEN for r in roles.values()) >= 8
