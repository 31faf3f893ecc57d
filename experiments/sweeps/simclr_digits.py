"""SimCLR's batch size and temperature on scikit-learn's 8x8 digits: batches of 32 and 256 (62 and
510 negatives per anchor) at temperatures 0.1, 0.5 and 1.0, each 500 steps of
contrastive_digits.py's ResNet, then the linear probe and 20-NN (in each run's final_metrics):

    dul-jax sweep --sweep experiments/sweeps/simclr_digits.py --workdir runs/sweep_simclr_digits \
        --no-report

Equal steps, so the batch of 256 sees 8x the images (and compute) of the batch of 32, as the
SimCLR paper's batch-size study compares at equal epochs. No fits: these are not scaling laws.
"""

import os

from dul_jax.config import load_config
from dul_jax.scaling.sweep import SweepRun


def get_sweep():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config(os.path.join(here, 'configs', 'contrastive_digits.py'))
    c.train.update(steps=500, eval_every=0, ckpt_every=250, sample_every=0, keep_checkpoints=1)
    runs = [SweepRun(f'b{batch}_t{temperature}', {'train.batch_size': batch,
                                                  'model.temperature': temperature})
            for batch in (32, 256) for temperature in (0.1, 0.5, 1.0)]
    return c, runs
