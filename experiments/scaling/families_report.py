"""The scaling exponents of the families side by side: byte-level GPT, iGPT, DiT and MAE (with
the standard parametrization and one learning rate, and with µP and cooldown branches).

    python experiments/scaling/families_report.py [--results experiments/results]
        [--out experiments/results/scaling_families] [--n-boot 200]

Reads each sweep's results.jsonl (written by `dul-jax sweep`, copied under --results), fits every
family with the same code (dul_jax/scaling/report.py run_fits: bootstrap intervals, convergence,
the held-out largest run; seed repeats merged at their mean) and writes report.md and
exponents.png, plus the family-specific checks: DiT's FID against forward GFLOPs (Peebles & Xie
2023) and against the loss (Liang et al. 2024), MAE's probe accuracy against its reconstruction
loss (Xie et al. 2023) and the epochs where its 8,000 images run out, the cooldown branches
against cosine runs, how far the best learning rate moves with width (µP against the standard
parametrization, where a family has an lr sweep) and the scaling regime each family's fits
support. Losses are in each family's own units, so only exponents compare across rows.
"""

import argparse
import dataclasses
import io
import math
import os
import sys

import matplotlib

matplotlib.use('Agg')  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from dul_jax.scaling import fit, report

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    what: str
    sweep: str          # directory under --results, and experiments/scaling/<file>.py
    units: str
    literature: dict    # quantity -> 'value (source)'
    examples: int = 0   # training examples of the data set, for epochs (0: not shown)
    # results.jsonl (under --results) of a learning-rate sweep over widths, for the µP column
    lr_sweep: str = ''
    mup_default: int = 0   # model.mup_base_width of runs whose overrides do not set it


FAMILIES = (
    Family('AR bytes', 'GPT on Python source bytes (python_source.py)', 'scaling_python_source',
           'nats/byte', {'alpha_N': '0.076 (Kaplan 2020, pure)', 'alpha_C': '0.050 (Kaplan 2020, '
                         'pure)', 'a': '0.73 (Kaplan 2020); 0.50 (Hoffmann 2022)',
                         'L(N, D)': 'alpha 0.34, beta 0.28 (Hoffmann 2022)'}),
    Family('iGPT', 'iGPT on 8x8 digits, one data budget (igpt_digits.py)',
           'scaling_igpt_digits', 'nats/pixel', {'a': '~0.7 (Henighan 2020, all domains)'},
           lr_sweep='mup_transfer/results.jsonl'),
    Family('DiT', 'diffusion transformer on MNIST (dit_mnist.py)', 'scaling_dit_mnist',
           'v-MSE, min-SNR-5', {'a': '0.568 (Liang 2024)'}, examples=8000),
    Family('MAE', 'masked autoencoder on MNIST (mae_mnist.py)', 'scaling_mae_mnist',
           'masked-patch MSE', {}, examples=8000),
    Family('MAE µP', 'MAE on binarized MNIST with µP, cooldown branches of warmup-stable-decay '
           'runs (mae_mup_wsd.py)', 'mae_mup_wsd', 'masked-patch MSE', {}, examples=50000,
           lr_sweep='mae_mup_wsd/lr_results.jsonl', mup_default=32),
    Family('DiT µP', 'unconditional DiT on binarized MNIST with µP, cooldown branches of '
           'warmup-stable-decay runs (dit_mup_wsd.py)', 'dit_mup_wsd', 'v-MSE, min-SNR-5', {},
           examples=50000, lr_sweep='dit_mup_wsd/lr_results.jsonl', mup_default=32),
)
# the cooldown-vs-cosine tables written by experiments/mup_wsd.py, by family
COOLDOWN_TABLES = (('MAE µP', 'mae_mup_wsd/cooldown_vs_cosine.md'),
                   ('DiT µP', 'dit_mup_wsd/cooldown_vs_cosine.md'))
QUANTITIES = (('alpha_N', 'L(N) = A N^-alpha'), ('alpha_C', 'L(C) = A C^-alpha'),
              ('a', 'IsoFLOP N_opt ~ C^a'), ('joint_alpha', 'L(N, D): alpha'),
              ('joint_beta', 'L(N, D): beta'))


def _estimate(b, name='alpha'):
    """(value, low, high, converged) of a bootstrap result, or None where it was not fitted."""
    if not isinstance(b, fit.BootstrapResult):
        return None
    lo, hi = b.intervals[name]
    return float(b.fit.params[name]), float(lo), float(hi), bool(b.fit.converged)


def family_summary(family, results, n_boot):
    fits = report.run_fits(results, n_boot=n_boot, units=family.units)
    merged = report.merge_seeds([r for r in results if report.usable(r)])
    spreads = [(max(r['seed_losses']) - min(r['seed_losses'])) / r['loss']
               for r in merged if r.get('seed_losses')]
    h = fits.get('holdout')
    return {
        'fits': fits, 'runs': len(results),
        'alpha_N': _estimate(fits['L(N)'].get('pure_power_law')),
        'alpha_N_E': _estimate(fits['L(N)'].get('power_law')),
        'alpha_C': _estimate(fits['L(C)'].get('pure_power_law')),
        'alpha_C_E': _estimate(fits['L(C)'].get('power_law')),
        'a': _estimate(fits['isoflop'], 'a'),
        'joint_alpha': _estimate(fits['chinchilla'], 'alpha'),
        'joint_beta': _estimate(fits['chinchilla'], 'beta'),
        'holdout': None if isinstance(h, str) or h is None else h,
        'holdout_why': h if isinstance(h, str) else '',
        'seed_spread': (float(np.mean(spreads)), len(spreads)) if spreads else None,
    }


def _cell(est):
    if est is None:
        return 'not fitted'
    value, lo, hi, converged = est
    return f'{value:.3g} [{lo:.3g}, {hi:.3g}]' + ('' if converged else ' **not converged**')


def _holdout_cell(s):
    h = s['holdout']
    if h is None:
        return 'n/a'
    r = s['fits']['arrays']
    return f'{100 * h.rel_error:+.1f}% (`{r["name"][h.index]}`, {h.law.split("=")[0].strip()})'


def _seed_cell(s):
    if s['seed_spread'] is None:
        return 'one seed'
    mean, count = s['seed_spread']
    return f'{100 * mean:.2f}% of the loss ({count} pairs)'


def _resolved(est):
    """An exponent whose 95% interval excludes 0."""
    return est is not None and est[1] > 0


def regime(s) -> str:
    """What the fits support, read from which exponents are resolved (interval above 0)."""
    # N matters where L(N) or the joint law's alpha is resolved (an IsoFLOP sweep's L(N) mixes
    # sizes trained to different lengths; the joint law separates them)
    n = _resolved(s['alpha_N']) or _resolved(s['joint_alpha'])
    c = _resolved(s['alpha_C'])
    if n and c:
        return 'power law in N and in C'
    if c:
        return 'power law in C only: the loss follows training length, not size'
    if n:
        return 'power law in N only'
    return 'no power law resolved'


def lr_transfer(rows, mup_default=0) -> dict:
    """{'µP' or 'standard': {width: fitted best log2 lr - the smallest width's}} of a
    learning-rate sweep over widths (rows: result dicts with the lr and width in overrides), on
    the mean loss over seeds; at the base width both parametrizations pool their runs."""
    seeds = {}   # kind -> width -> lr -> the losses of its seeds
    for r in rows:
        o = r['overrides']
        kind = 'µP' if o.get('model.mup_base_width', mup_default) else 'standard'
        loss = math.inf if r.get('diverged') or r.get('loss') is None else r['loss']
        seeds.setdefault(kind, {}).setdefault(o['model.embed_dim'], {}).setdefault(
            o['optim.lr'], []).append(loss)
    if 'µP' in seeds and 'standard' in seeds:
        # the base width is one model both ways (the same runs twice): per rate, the seeds of
        # whichever parametrization ran more of them
        base = min(seeds['µP'])
        mup, sp = seeds['µP'].get(base, {}), seeds['standard'].get(base, {})
        pooled = {lr: max(mup.get(lr, []), sp.get(lr, []), key=len) for lr in {*mup, *sp}}
        seeds['µP'][base] = seeds['standard'][base] = pooled
    curves = {kind: {w: {lr: float(np.mean(v)) for lr, v in lrs.items()}
                     for w, lrs in widths.items()} for kind, widths in seeds.items()}
    out = {}
    for kind, widths in curves.items():
        base = fit.best_log2_lr(widths[min(widths)])
        out[kind] = {w: fit.best_log2_lr(c) - base for w, c in sorted(widths.items())}
    return out


def _transfer_cell(transfer) -> str:
    if not transfer:
        return 'not run'
    parts = []
    for kind in ('µP', 'standard'):
        if kind in transfer and len(transfer[kind]) > 1:
            widths = transfer[kind]
            worst = max((w for w in widths if w != min(widths)), key=lambda w: abs(widths[w]))
            parts.append(f'{kind}: {widths[worst]:+.2f} octave at width {worst} (base '
                         f'{min(widths)})')
    return '; '.join(parts) or 'one width only'


def exponent_table(summaries):
    lines = ['| family | runs | loss units | ' + ' | '.join(q for _, q in QUANTITIES)
             + ' | literature | held-out largest run: error | seed spread | µP: best lr off '
             "the base width's (worst width) | regime |",
             '|---|---|---|' + '---|' * len(QUANTITIES) + '---|---|---|---|---|']
    for family, s in summaries:
        lit = '; '.join(f'{k}: {v}' for k, v in family.literature.items()) or 'none published'
        lines.append(f'| {family.name}: {family.what} | {s["runs"]} | {family.units} | '
                     + ' | '.join(_cell(s[k]) for k, _ in QUANTITIES)
                     + f' | {lit} | {_holdout_cell(s)} | {_seed_cell(s)} | '
                     f'{_transfer_cell(s.get("transfer"))} | {regime(s)} |')
    lines += ['', 'With an irreducible term, L = E + A x^-alpha (its alpha):', '',
              '| family | L(N): alpha | L(C): alpha |', '|---|---|---|']
    for family, s in summaries:
        lines.append(f'| {family.name} | {_cell(s["alpha_N_E"])} | {_cell(s["alpha_C_E"])} |')
    return lines


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120)
    with open(path, 'wb') as f:
        f.write(buffer.getvalue())
    plt.close(fig)


def plot_exponents(summaries, path):
    literature = {('AR bytes', 'alpha_N'): [0.076], ('AR bytes', 'alpha_C'): [0.050],
                  ('AR bytes', 'a'): [0.73, 0.50], ('iGPT', 'a'): [0.7], ('DiT', 'a'): [0.568],
                  ('AR bytes', 'joint_alpha'): [0.34], ('AR bytes', 'joint_beta'): [0.28]}
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(18, 3.6), sharey=True)
    names = [f.name for f, _ in summaries]
    for ax, (key, title) in zip(axes, QUANTITIES):
        for y, (family, s) in enumerate(summaries):
            est = s[key]
            if est is not None:
                value, lo, hi, _ = est
                # a percentile interval need not contain the full-data estimate: draw both
                ax.plot([lo, hi], [y, y], '|-', color='C0', ms=10)
                ax.plot([value], [y], 'o', color='C0',
                        label='this codebase' if y == 0 else None)
            for v in literature.get((family.name, key), []):
                ax.plot([v], [y], 'x', color='C3', ms=9, mew=2)
        ax.plot([], [], 'x', color='C3', ms=9, mew=2, label='literature')
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.6, len(names) - 0.4)
        if key.startswith('joint'):   # an unidentified exponent's interval would hide the rest
            ax.set_xlim(0.0, 2.0)
            title += ' (axis cut at 2)'
        ax.set_title(title)
        ax.grid(True, axis='x', alpha=0.3)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc='lower right')
    fig.suptitle('Scaling exponents with 95% bootstrap intervals', fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _corr(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return 'n/a (fewer than 3 runs)'
    pearson = np.corrcoef(x[keep], y[keep])[0, 1]
    spearman = stats.spearmanr(x[keep], y[keep]).statistic
    return f'Pearson {pearson:+.2f}, Spearman {spearman:+.2f} ({keep.sum()} runs)'


def _metric(run, key):
    value = (run.get('final_metrics') or {}).get(key)
    return math.nan if value is None else float(value)


def dit_section(results, outdir):
    runs = [r for r in results if report.usable(r)]
    gflops = [r['F_forward'] / 1e9 for r in runs]
    fid = [_metric(r, 'fid') for r in runs]
    loss = [r['loss'] for r in runs]
    mid = [i for i, r in enumerate(runs) if abs(r['C'] / 3e12 - 1) < 0.05]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(runs):
        patch = r['overrides']['model.patch']
        ax.scatter(gflops[i], fid[i], marker='o' if patch == 4 else 's',
                   c=[np.log10(r['C'])], cmap='viridis', vmin=11.9, vmax=13.1, s=40)
        ax2.scatter(loss[i], fid[i], marker='o' if patch == 4 else 's', c=[np.log10(r['C'])],
                    cmap='viridis', vmin=11.9, vmax=13.1, s=40)
    ax.set_xscale('log')
    ax.set_xlabel('forward GFLOPs per image')
    ax2.set_xlabel('test loss (v-MSE, min-SNR-5)')
    for a in (ax, ax2):
        a.set_ylabel('domain FID (256 samples)')
        a.grid(True, alpha=0.3)
    ax.set_title('FID against model GFLOPs (o patch 4, s patch 7; colour: log10 C)', fontsize=9)
    ax2.set_title('FID against the training objective', fontsize=9)
    fig.tight_layout()
    _save(fig, os.path.join(outdir, 'dit_fid.png'))
    log_g = np.log10(gflops)
    lines = [
        '## DiT: FID, GFLOPs and the loss', '',
        '![DiT FID](dit_fid.png)', '',
        ('Peebles & Xie 2023 found FID falling with forward GFLOPs whatever the mix of width, '
         'depth and patch size (at equal training steps); Liang et al. 2024 that the training '
         'loss tracks FID. Here every run has its own steps (IsoFLOP groups), so the first '
         'correlation mixes model size with training length; the 3e12 group, which holds both '
         'patch sizes, compares them at equal compute.'), '',
        f'- FID against log10 forward GFLOPs, all runs: {_corr(log_g, fid)}',
        ('- FID against log10 forward GFLOPs, the 3e12 group: '
         f'{_corr(log_g[mid], np.asarray(fid)[mid])}'),
        f'- FID against the test loss, all runs: {_corr(loss, fid)}',
        ('- variational bound (bits/dim) against the test loss, all runs: '
         f'{_corr(loss, [_metric(r, "bound_bits_per_dim") for r in runs])}'), '',
        ('| run | patch | N | forward GFLOPs | C | epochs | test loss | train loss (last log) '
         '| bound (bits/dim) | FID |'), '|---|---|---|---|---|---|---|---|---|---|']
    for i, r in enumerate(sorted(runs, key=lambda r: (r['C'], r['N']))):
        lines.append(
            f'| {r["name"]} | {r["overrides"]["model.patch"]} | {r["N"]:.3g} | '
            f'{r["F_forward"] / 1e9:.4f} | {r["C"]:.2g} | {_epochs(r, 28 * 28):.1f} | '
            f'{r["loss"]:.4f} | {_fmt(r.get("train_loss"))} | '
            f'{_metric(r, "bound_bits_per_dim"):.3f} | {_metric(r, "fid"):.2f} |')
    return lines + ['']


def _epochs(run, example_size, examples=8000):
    return run['D'] / example_size / examples


def _fmt(value, digits=4):
    return 'n/a' if value is None else f'{value:.{digits}f}'


def mae_section(results):
    runs = [r for r in results if report.usable(r)]
    loss = [r['loss'] for r in runs]
    probe = [_metric(r, 'probe_accuracy') for r in runs]
    knn = [_metric(r, 'knn_accuracy') for r in runs]
    sizes = [r['N'] for r in runs]
    lines = [
        '## MAE: does the reconstruction loss predict the probes?', '',
        ('Xie et al. 2023 ("On data scaling in masked image modeling") found the validation '
         'loss a good predictor of downstream quality, and larger models overfitting small '
         'data. A negative correlation means a lower test loss goes with higher accuracy.'), '',
        f'- linear-probe accuracy against the test loss: {_corr(loss, probe)}',
        f'- 20-NN accuracy against the test loss: {_corr(loss, knn)}',
        f'- linear-probe accuracy against log10 N: {_corr(np.log10(sizes), probe)}', '',
        ('Where 8,000 images run out: epochs is D / (49 patches x 8,000); a train loss well '
         'below the test loss is a model memorising its images.'), '',
        '| run | N | C | epochs | test loss | train loss (last log) | linear probe | 20-NN |',
        '|---|---|---|---|---|---|---|---|']
    for r in sorted(runs, key=lambda r: (r['C'], r['N'])):
        lines.append(f'| {r["name"]} | {r["N"]:.3g} | {r["C"]:.2g} | {_epochs(r, 49):.1f} | '
                     f'{r["loss"]:.4f} | {_fmt(r.get("train_loss"))} | '
                     f'{_metric(r, "probe_accuracy"):.3f} | {_metric(r, "knn_accuracy"):.3f} |')
    return lines + ['']


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', default=os.path.join(HERE, 'results'))
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'scaling_families'))
    p.add_argument('--n-boot', type=int, default=200)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summaries, missing, loaded = [], [], {}
    for family in FAMILIES:
        path = os.path.join(args.results, family.sweep, 'results.jsonl')
        if not os.path.isfile(path):
            missing.append(f'{family.name}: no {path}')
            continue
        loaded[family.name] = report.load_results(path)
        summary = family_summary(family, loaded[family.name], args.n_boot)
        lr_path = os.path.join(args.results, family.lr_sweep) if family.lr_sweep else ''
        if lr_path and os.path.isfile(lr_path):
            summary['transfer'] = lr_transfer(report.load_results(lr_path), family.mup_default)
        summaries.append((family, summary))
    if not summaries:
        print(f'error: no results.jsonl under {args.results}', file=sys.stderr)
        return 1
    plot_exponents(summaries, os.path.join(args.out, 'exponents.png'))
    intro = ('Each row is one `dul-jax sweep` fitted by the same code: pure power laws in N and '
             'C (the forms Kaplan et al. reported; L(N) through the best-trained run of each '
             'size, which an IsoFLOP sweep trains to different lengths, so there the joint law '
             'is the one to read), the IsoFLOP exponent (Hoffmann et al. Approach 2) and the '
             'joint L(N, D) = E + A/N^alpha + B/D^beta (Approach 3) where the sweep has IsoFLOP '
             'groups, 95% bootstrap percentile '
             f'intervals over {args.n_boot} resamples of the runs, convergence, and the error '
             'of predicting the largest run from the rest. Losses are in each family\'s units, '
             'so exponents compare across rows, the losses themselves do not. Seed spread: the '
             'mean |loss difference| of runs repeated with another seed, relative to their '
             'loss: the noise floor under the fits. µP: the fitted best learning rate (parabola '
             'vertex in log2 lr) of the width furthest from the base width\'s, in octaves. '
             'Regime: which of L(N) (or the joint law\'s alpha) and L(C) have a 95% interval '
             'above 0.')
    lines = ['# Scaling laws of the families, side by side', '', intro, '',
             '![exponents](exponents.png)', '', *exponent_table(summaries), '']
    if missing:
        lines += ['Missing sweeps: ' + '; '.join(missing), '']
    if 'DiT' in loaded:
        lines += dit_section(loaded['DiT'], args.out)
    if 'MAE' in loaded:
        lines += mae_section(loaded['MAE'])
    tables = [(name, os.path.join(args.results, path)) for name, path in COOLDOWN_TABLES
              if os.path.isfile(os.path.join(args.results, path))]
    if tables:
        lines += ['## Cooldown branches against cosine runs', '',
                  ('Hägele et al. 2024: a warmup-stable-decay run cooled down at step k over k/5 '
                   'steps reaches the loss of a cosine run of the same length trained from '
                   'scratch, so one stable run gives every length for the price of its '
                   'decays.'), '']
        for name, path in tables:
            with open(path) as f:
                lines += [f'### {name}', '', f.read().strip(), '']
    lines += ['Each family\'s own report (plots, every fit, every run): '
              + ', '.join(f'[{f.name}](../{f.sweep}/report.md)' for f, _ in summaries), '']
    with open(os.path.join(args.out, 'report.md'), 'w') as f:
        f.write('\n'.join(lines))
    print(f'wrote {args.out}/report.md and its plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
