"""Scaling-law report from a sweep's results table: fits, plots and report.md.

    python -m dul_jax.scaling.report RESULTS.jsonl OUTDIR [--title T] [--holdout largest_N]

results.jsonl has one JSON object per run; the keys read are name, N (non-embedding parameters),
D (training tokens), C (training FLOPs), loss (final eval loss, nats/token) and budget (the
nominal compute budget of the run's IsoFLOP group, or null); wall_s is shown when present.
Runs that differ only in their seed (overrides['seed']) are one point of the fits, at their
mean loss; the runs table shows each such point's seed spread.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys

import matplotlib

matplotlib.use('Agg')  # files only, never a window; must precede pyplot's import
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from dul_jax import storage
from dul_jax.scaling import fit

UNITS = 'nats/token'  # of the loss; a sweep of another family names its own (REPORT)
# Published values shown beside ours in report.md (Kaplan's a: N_opt ~ C^0.73).
KAPLAN = {'alpha_N': 0.076, 'alpha_D': 0.095, 'alpha_C': 0.050, 'a': 0.73}
HOFFMANN = {'alpha': 0.34, 'beta': 0.28, 'E': 1.69, 'A': 406.4, 'B': 410.7, 'a': 0.50}
BESIROGLU = {'alpha': 0.35, 'beta': 0.37, 'E': 1.82, 'A': 482.0, 'B': 2085.0}
LITERATURE_NOTE = (
    'Literature: Kaplan et al. 2020 fitted pure power laws (no E) on WebText2; Hoffmann et al. '
    '2022 (Chinchilla; a from Approach 1, 0.49 from Approach 2) and the refit of their data by '
    'Besiroglu et al. 2024 fitted E + A/N^alpha + B/D^beta on MassiveText. Their losses are in '
    'nats/token on other data and tokenisations, so only the exponents are comparable with '
    "ours, not E, A or B; and a pure power law's exponent is comparable only with a pure power "
    "law's.")
SELECTION_NOTE = (
    'Which runs each law is fitted to: L(N), for each N the run that saw the most tokens (the '
    'best-trained); L(D), the lower envelope of loss against D (the best loss reached with at '
    'most D tokens); L(C), the lower envelope of loss against C (the compute-efficient '
    'frontier); L(N, D), every run. An IsoFLOP sweep trains no size to convergence, so its '
    'L(N) and L(D) mix the model-size and data limits; the joint L(N, D) and the IsoFLOP '
    'exponent are the fits designed for such a sweep.')


def load_results(path) -> list[dict]:
    """One dict per non-blank line of a JSON-lines file (local or gs://)."""
    return [json.loads(line) for line in storage.path(path).read_text().splitlines()
            if line.strip()]


def _save_figure(fig, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120)
    storage.write_atomic(path, buffer.getvalue())


def _arrays(results):
    def column(key, default=float('nan')):
        return np.array([default if r.get(key) is None else r[key] for r in results],
                        np.float64)
    return {
        'name': [str(r.get('name', i)) for i, r in enumerate(results)],
        'N': column('N'), 'D': column('D'), 'C': column('C'), 'loss': column('loss'),
        'budget': column('budget'), 'wall_s': column('wall_s'),
        'seeds': [_seed_note(r) for r in results],
    }


def _seed_note(run) -> str:
    losses = run.get('seed_losses')
    if not losses:
        return '1'
    return f'{len(losses)} (spread {max(losses) - min(losses):.4f})'


def merge_seeds(results) -> list[dict]:
    """Runs whose overrides differ only in 'seed' become one run at their mean loss, with
    'seed_losses' (in order) and 'seed_names'; the first run's other fields are kept."""
    groups = {}
    for run in results:
        rest = {k: v for k, v in (run.get('overrides') or {}).items() if k != 'seed'}
        key = json.dumps(rest, sort_keys=True) if run.get('overrides') else id(run)
        groups.setdefault(key, []).append(run)
    merged = []
    for runs in groups.values():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        losses = [float(r['loss']) for r in runs]
        merged.append({**runs[0], 'loss': float(np.mean(losses)), 'seed_losses': losses,
                       'seed_names': [r.get('name') for r in runs]})
    return merged


# ---------------------------------------------------------------------------------------------
# Fitting everything the report shows; each piece is a BootstrapResult/FitResult or the reason
# it could not be fitted (a string), so one missing piece never stops the rest.

def _try(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except fit.FitError as e:
        return str(e)


def usable(run):
    """A run every fit can use: finite, positive N, D, C and loss (a diverged run has none)."""
    try:
        return all(math.isfinite(float(run[k])) and float(run[k]) > 0
                   for k in ('N', 'D', 'C', 'loss'))
    except (KeyError, TypeError, ValueError):
        return False


def run_fits(results, n_boot: int = 200, seed: int = 0, holdout: str | None = 'largest_N',
             units: str = UNITS):
    """Every fit of the report, on the usable runs (seed repeats merged); the names of the
    others in 'excluded'."""
    runs = merge_seeds([run for run in results if usable(run)])
    if not runs:
        raise ValueError('no run has finite, positive N, D, C and loss')
    r = _arrays(runs)
    N, D, C, L, budget = r['N'], r['D'], r['C'], r['loss'], r['budget']
    out = {'arrays': r, 'units': units,
           'excluded': [str(run.get('name', '?')) for run in results if not usable(run)]}
    # L(N): per size, the run that saw the most tokens, i.e. the best-trained one
    idx_n = fit.best_trained(N, D, L)
    # L(D): the lower envelope of loss against tokens (the best loss any model reached with at
    # most D tokens): in an IsoFLOP sweep every run has its own D, so a per-D choice would
    # keep every run, starved models included
    idx_d = fit.lower_envelope(D, L)
    # L(C): the compute-efficient frontier
    idx_c = fit.lower_envelope(C, L)
    for key, x, idx in (('L(N)', N, idx_n), ('L(D)', D, idx_d), ('L(C)', C, idx_c)):
        out[key] = {'indices': idx, **fit.power_law_fits(x[idx], L[idx], n_boot=n_boot,
                                                         seed=seed)}
    out['chinchilla'] = _try(fit.bootstrap, fit.fit_chinchilla, N, D, L, n_boot=n_boot,
                             seed=seed)
    if np.all(np.isnan(budget)):
        out['isoflop'] = 'no run has a budget field, so there are no IsoFLOP groups'
        out['parabolas'], out['parabola_notes'] = [], []
    else:
        grouped = np.isfinite(budget)
        args = (N[grouped], L[grouped], budget[grouped])
        out['parabolas'], out['parabola_notes'] = fit.isoflop_parabolas(*args)
        # resample within each budget, so every resample keeps all the budgets
        out['isoflop'] = _try(fit.bootstrap, fit.fit_isoflop, *args, n_boot=n_boot, seed=seed,
                              groups=budget[grouped], warm_start=False)
    if holdout:
        out['holdout'] = _try(fit.holdout_chinchilla, N, D, L, C, which=holdout)
        if isinstance(out['holdout'], str) and len(np.unique(D)) == 1:  # one data budget
            out['holdout'] = _try(fit.holdout_power_law, N[idx_n], L[idx_n])
            if not isinstance(out['holdout'], str):
                out['holdout'].index = int(idx_n[out['holdout'].index])
    return out


# ---------------------------------------------------------------------------------------------
# Plots

def _budget_colours(budget):
    budgets = np.unique(budget[np.isfinite(budget)])
    cmap = plt.get_cmap('viridis')
    return {b: cmap(i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def _scatter_runs(ax, x, L, budget):
    """Runs coloured by budget (one legend entry each); runs without a budget in grey."""
    colours = _budget_colours(budget)
    for b, colour in colours.items():
        sel = budget == b
        ax.scatter(x[sel], L[sel], color=colour, s=28, zorder=3, label=f'C = {b:.2g} FLOPs')
    sel = ~np.isfinite(budget)
    if sel.any():
        ax.scatter(x[sel], L[sel], color='0.5', s=28, zorder=3, label='runs (no budget)')


def _fit_lines(ax, fits, x_range, var):
    xs = np.logspace(np.log10(x_range[0]), np.log10(x_range[1]), 200)
    styles = {'power_law': ('-', f'E + A {var}^-alpha'),
              'pure_power_law': ('--', f'A {var}^-alpha')}
    for key, (style, form) in styles.items():
        b = fits.get(key)
        if isinstance(b, fit.BootstrapResult):
            p = b.fit.params
            label = f'{form}: alpha = {p["alpha"]:.3f}' + (
                f', E = {p["E"]:.3f}' if 'E' in p else '')
            ax.plot(xs, b.fit.predict(xs), style, color='C3', lw=1.5, label=label)


def _finish(ax, xlabel, title, units):
    ax.set_xscale('log')
    ax.set_yscale('log')
    # losses span less than a decade: plain numbers read better than 4 x 10^0
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f'eval loss ({units})')
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)


def plot_loss_vs_n(fits, path):
    r = fits['arrays']
    N, L = r['N'], r['loss']
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    _scatter_runs(ax, N, L, r['budget'])
    idx = fits['L(N)']['indices']
    ax.scatter(N[idx], L[idx], facecolors='none', edgecolors='k', s=90, zorder=4,
               label='best-trained run per N (fitted)')
    _fit_lines(ax, fits['L(N)'], (N.min(), N.max()), 'N')
    _finish(ax, 'non-embedding parameters N', 'Loss against model size', fits['units'])
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_isoflop(fits, path):
    r = fits['arrays']
    N, L, budget = r['N'], r['loss'], r['budget']
    colours = _budget_colours(budget)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    _scatter_runs(ax, N, L, budget)
    for p in fits['parabolas']:
        ns = np.logspace(np.log10(p.n_range[0]) - 0.2, np.log10(p.n_range[1]) + 0.2, 100)
        ax.plot(ns, p(ns), color=colours[p.budget], lw=1)
        if p.positive_curvature:
            ax.plot(p.n_opt, p.loss_opt, '*', color=colours[p.budget], ms=14, mec='k',
                    zorder=5)
    ax.plot([], [], '*', color='w', mec='k', ms=12, label='parabola minimum N_opt')
    _finish(ax, 'non-embedding parameters N', 'IsoFLOP profiles (parabolas in log N)',
            fits['units'])
    iso = fits['isoflop']
    if isinstance(iso, fit.BootstrapResult):
        used = iso.fit.details['used']
        cs = np.array([p.budget for p in used])
        ax2.scatter(cs, [p.n_opt for p in used], color=[colours[c] for c in cs], s=50,
                    edgecolors='k', zorder=3, label='N_opt per budget')
        grid = np.logspace(np.log10(cs.min()) - 0.3, np.log10(cs.max()) + 0.3, 50)
        lo, hi = iso.intervals['a']
        ax2.plot(grid, iso.fit.predict(grid), 'C3-',
                 label=f'N_opt ~ C^a, a = {iso.fit.params["a"]:.3f} [{lo:.3f}, {hi:.3f}]')
        ax2.set_xscale('log')
        ax2.set_yscale('log')
        ax2.legend(fontsize=8)
        ax2.grid(True, which='both', alpha=0.3)
    else:
        ax2.text(0.5, 0.5, 'IsoFLOP exponent not fitted:\n' + _wrap(iso, 50),
                 ha='center', va='center', transform=ax2.transAxes, fontsize=8)
    ax2.set_xlabel('compute budget C (FLOPs)')
    ax2.set_ylabel('compute-optimal N_opt (parameters)')
    ax2.set_title('Compute-optimal model size')
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _wrap(text, width):
    words, lines, line = text.split(), [], ''
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f'{line} {w}'.strip()
    return '\n'.join(lines + [line])


def plot_frontier(fits, path):
    r = fits['arrays']
    C, L = r['C'], r['loss']
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    _scatter_runs(ax, C, L, r['budget'])
    idx = fits['L(C)']['indices']
    ax.step(C[idx], L[idx], where='post', color='k', lw=1, label='lower envelope (frontier)')
    ax.scatter(C[idx], L[idx], facecolors='none', edgecolors='k', s=90, zorder=4)
    minima = [p for p in fits['parabolas'] if p.positive_curvature]
    if minima:
        ax.plot([p.budget for p in minima], [p.loss_opt for p in minima], '*', color='w',
                mec='k', ms=12, zorder=5, label='IsoFLOP parabola minima')
    _fit_lines(ax, fits['L(C)'], (C.min(), C.max()), 'C')
    _finish(ax, 'training compute C (FLOPs)', 'Compute-efficient frontier', fits['units'])
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# report.md

def _g(v, digits=3):
    return 'n/a' if v is None or not np.isfinite(v) else f'{v:.{digits}g}'


def _ci(b, name):
    lo, hi = b.intervals[name]
    return f'{_g(b.fit.params[name])} [{_g(lo)}, {_g(hi)}]'


def _status(b):
    f = b.fit
    ok = 'yes' if f.converged else '**no**'
    failed = f'{b.n_failed}/{b.n_boot} resamples failed'
    if f.form == 'isoflop':  # closed form: "converged" means every minimum lies inside its sizes
        return f'{ok} (closed form, {f.n_points} budgets; {failed})'
    return (f'{ok} (|grad| {f.grad_norm:.0e}, {f.n_starts_agreeing}/{f.n_starts} starts agree; '
            f'{failed})')


def _lit(*values):
    return ' | '.join('' if v is None else f'{v:g}' for v in values)


def _fit_rows(fits, literature):
    """Rows: quantity, this sweep [95% CI], converged, Kaplan, Hoffmann, Besiroglu."""
    rows, skipped = [], []

    def add(label, b, name, lit=(None, None, None), value=None):
        rows.append(f'| {label} | {value or _ci(b, name)} | {_status(b)} | '
                    + (_lit(*lit) + ' |' if literature else ''))

    # literature beside the pure law (Kaplan's form) and beside the law with E (Chinchilla's)
    one_var = [('L(N)', 'N', (KAPLAN['alpha_N'], None, None),
                (None, HOFFMANN['alpha'], BESIROGLU['alpha'])),
               ('L(D)', 'D', (KAPLAN['alpha_D'], None, None),
                (None, HOFFMANN['beta'], BESIROGLU['beta'])),
               ('L(C)', 'C', (KAPLAN['alpha_C'], None, None), (None, None, None))]
    for key, var, lit_pure, lit_e in one_var:
        pure, with_e = fits[key].get('pure_power_law'), fits[key].get('power_law')
        n_pts = len(fits[key]['indices'])
        if isinstance(pure, fit.BootstrapResult):
            add(f'{key} = A {var}^-alpha: alpha ({n_pts} points)', pure, 'alpha', lit_pure)
        else:
            skipped.append(f'{key}, pure power law: {pure}')
        if isinstance(with_e, fit.BootstrapResult):
            add(f'{key} = E + A {var}^-alpha: alpha', with_e, 'alpha', lit_e)
            add(f'{key} = E + A {var}^-alpha: E', with_e, 'E')
        else:
            skipped.append(f'{key}, with irreducible loss E: {with_e}')
    ch = fits['chinchilla']
    if isinstance(ch, fit.BootstrapResult):
        for name in ('alpha', 'beta', 'E', 'A', 'B'):
            add(f'L(N, D) joint: {name}', ch, name,
                (None, HOFFMANN[name], BESIROGLU[name]))
        a = fit.chinchilla_optimal_exponent(ch.fit.params)
        lo, hi = ch.interval(lambda s: s['beta'] / (s['alpha'] + s['beta']))
        lit_a = (None, round(0.28 / 0.62, 2), round(0.37 / 0.72, 2))
        add('L(N, D) joint: implied a = beta/(alpha+beta)', ch, None, lit_a,
            value=f'{_g(a)} [{_g(lo)}, {_g(hi)}]')
    else:
        skipped.append(f'Chinchilla joint fit L(N, D): {ch}')
    iso = fits['isoflop']
    if isinstance(iso, fit.BootstrapResult):
        add(f'IsoFLOP N_opt ~ C^a: a ({iso.fit.n_points} budgets)', iso, 'a',
            (KAPLAN['a'], HOFFMANN['a'], None))
    else:
        skipped.append(f'IsoFLOP exponent a: could not be fitted: {iso}')
    return rows, skipped


def _runs_table(r, units):
    lines = [f'| run | N | D | C (FLOPs) | budget | loss ({units}) | seeds | wall (s) |',
             '|---|---|---|---|---|---|---|---|']
    order = sorted(range(len(r['name'])),
                   key=lambda i: (np.nan_to_num(r['budget'][i], nan=np.inf), r['N'][i]))
    for i in order:
        lines.append(f'| {r["name"][i]} | {r["N"][i]:.4g} | {r["D"][i]:.4g} | {r["C"][i]:.4g} |'
                     f' {_g(r["budget"][i])} | {r["loss"][i]:.4f} | {r["seeds"][i]} |'
                     f' {_g(r["wall_s"][i])} |')
    return lines


def _holdout_lines(fits, units):
    h = fits.get('holdout')
    if h is None:
        return []
    lines = ['## Held-out prediction', '']
    if isinstance(h, str):
        return lines + [f'Held-out prediction: not possible: {h}', '']
    r = fits['arrays']
    i = h.index
    which = 'largest N' if h.criterion == 'largest_N' else 'largest C'
    status = 'converged' if h.fit.converged else 'NOT converged'
    intro = (f'The law {h.law} fitted to every run except `{r["name"][i]}` ({which}: '
             f'N = {r["N"][i]:.4g}, D = {r["D"][i]:.4g}, C = {r["C"][i]:.4g}; fit {status}) '
             'predicts its loss:')
    error = (f'Held-out error: run `{r["name"][i]}`: predicted {h.predicted:.4f}, measured '
             f'{h.measured:.4f} {units}; error {h.abs_error:+.4f} '
             f'({100 * h.rel_error:+.2f}%).')
    return lines + [intro, '', error, '']


def write_report(results, outdir, title: str = 'Scaling laws', literature: bool = True,
                 holdout: str | None = 'largest_N', n_boot: int = 200, seed: int = 0,
                 units: str = UNITS) -> dict:
    """Fit, plot and write loss_vs_N.png, isoflop.png, frontier.png and report.md in outdir.

    results: a list of run dicts (see the module docstring) or the path of a results.jsonl.
    holdout: 'largest_N', 'largest_C' or None. Returns the fits (see run_fits).
    """
    if isinstance(results, (str, os.PathLike)):
        results = load_results(results)
    if not results:
        raise ValueError('no runs in the results')
    outdir = storage.path(outdir)
    fits = run_fits(results, n_boot=n_boot, seed=seed, holdout=holdout, units=units)
    plot_loss_vs_n(fits, outdir / 'loss_vs_N.png')
    plot_isoflop(fits, outdir / 'isoflop.png')
    plot_frontier(fits, outdir / 'frontier.png')

    rows, skipped = _fit_rows(fits, literature)
    level = 95
    head = f'| quantity | this sweep [{level}% CI] | converged |'
    rule = '|---|---|---|'
    if literature:
        head += ' Kaplan 2020 | Hoffmann 2022 | Besiroglu 2024 |'
        rule += '---|---|---|'
    intro = (f'{len(results)} runs. Losses are final eval losses in {units}. Intervals are '
             f'{level}% bootstrap percentile intervals over {n_boot} resamples of the runs '
             '(IsoFLOP: resampled within each budget); a fit is converged when L-BFGS-B '
             f'reported success and |gradient| <= {fit.GRAD_TOL:g} at the optimum.')
    plots = ('![loss against N](loss_vs_N.png) ![IsoFLOP profiles](isoflop.png) '
             '![frontier](frontier.png)')
    lines = [f'# {title}', '', intro, '', plots, '', '## Fits', '', head, rule, *rows, '']
    if skipped:
        lines += ['Not fitted:', ''] + [f'- {s}' for s in skipped] + ['']
    notes = fits['parabola_notes'] + (fits['isoflop'].fit.details['notes']
                                      if isinstance(fits['isoflop'], fit.BootstrapResult)
                                      else [])
    if notes:
        lines += ['IsoFLOP notes:', ''] + [f'- {n}' for n in notes] + ['']
    lines += [SELECTION_NOTE, '']
    if literature:
        lines += [LITERATURE_NOTE, '']
    lines += _holdout_lines(fits, units)
    lines += ['## Runs', '', *_runs_table(fits['arrays'], units), '']
    if fits['excluded']:
        lines += ['Left out of every fit (N, D, C or loss missing, non-finite or not positive): '
                  + ', '.join(f'`{name}`' for name in fits['excluded']), '']
    storage.write_atomic(outdir / 'report.md', '\n'.join(lines))
    return fits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results', help='results.jsonl of a sweep')
    parser.add_argument('outdir')
    parser.add_argument('--title', default='Scaling laws')
    parser.add_argument('--holdout', default='largest_N',
                        choices=['largest_N', 'largest_C', 'none'])
    parser.add_argument('--n-boot', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-literature', action='store_true')
    parser.add_argument('--units', default=UNITS, help='of the loss, e.g. bits/dim')
    args = parser.parse_args(argv)
    write_report(args.results, args.outdir, title=args.title,
                 literature=not args.no_literature,
                 holdout=None if args.holdout == 'none' else args.holdout,
                 n_boot=args.n_boot, seed=args.seed, units=args.units)
    print(f'wrote {os.path.join(args.outdir, "report.md")} and 3 plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
