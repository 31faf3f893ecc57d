"""Training several players in turn (a GAN's discriminator and generator): each declared `Phase`
takes its turn within one step, updating its own group of params with its own optimizer and
schedule; a phase with `repeats` r makes r updates, each on 1/r of the batch. Only families that
declare phases (`Task.phases`) train through here."""

import jax
import jax.numpy as jnp

from dul_jax.train.state import microbatches


def take_turns(update, phases, schedule):
    """`advance(state, batch, rng)` running every phase's updates in order. Metrics are named
    GROUP/NAME, with each group's learning rate; `loss` is the sum of the phases' mean losses."""

    def run_phase(state, batch, rng, phase):
        if phase.repeats == 1:
            return update(state, batch, rng, phase.group)

        def one(state, i_and_micro):
            i, micro = i_and_micro
            return update(state, micro, jax.random.fold_in(rng, i), phase.group)
        state, metrics = jax.lax.scan(one, state, (jnp.arange(phase.repeats),
                                                   microbatches(batch, phase.repeats)))
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    def advance(state, batch, rng):
        new_state, metrics = state, {'loss': 0.0}
        for i, phase in enumerate(phases):
            new_state, phase_metrics = run_phase(new_state, batch, jax.random.fold_in(rng, i),
                                                 phase)
            metrics['loss'] += phase_metrics['loss']
            metrics.update({f'{phase.group}/{k}': v for k, v in phase_metrics.items()})
            metrics[f'{phase.group}/lr'] = schedule[phase.group](state.step)
        return new_state, metrics

    return advance
