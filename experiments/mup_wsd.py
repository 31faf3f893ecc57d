"""The cooldown branches and the report of a µP + warmup-stable-decay study, STUDY being
experiments/scaling/STUDY.py (mae_mup_wsd, dit_mup_wsd):

    python experiments/mup_wsd.py STUDY branches runs/STUDY [stable_w32 ...]
    python experiments/mup_wsd.py STUDY report runs/STUDY [--out DIR]

`branches` trains, from each finished stable run WORKDIR/runs/stable_*, one cooldown branch per
BRANCH_STEPS k (SEEDED_BRANCH_STEPS for the seed repeats), decaying over k/5 steps, into
WORKDIR/runs/stable_*/cooldowns, smallest width first; a finished branch is skipped, a killed one
resumes. `report` writes into DIR (default experiments/results/STUDY): lr_transfer.md and
.png (loss against lr at the base width and at the check width, µP), cooldown_vs_cosine.md, the
scaling fits of every branch with seed repeats at their mean (report.md and its plots, by
dul_jax.scaling.report), results.jsonl with every branch and lr_results.jsonl with the lr runs.
"""

import argparse
import collections
import json
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from dul_jax.config import load_file_module
from dul_jax.scaling import cooldown, fit, report

HERE = os.path.dirname(os.path.abspath(__file__))
study = None   # the study's module, set by main()


def run_dirs(workdir, prefix):
    """The finished sweep runs WORKDIR/runs/PREFIX*, by name."""
    root = os.path.join(workdir, 'runs')
    return sorted(d for d in os.listdir(root) if d.startswith(prefix)
                  and os.path.isfile(os.path.join(root, d, 'result.json')))


def stable_dirs(workdir):
    return sorted(run_dirs(workdir, 'stable_'), key=lambda d: (int(d.split('_')[1][1:]), d))


def branches(workdir, only=()) -> None:
    for name in stable_dirs(workdir):
        if only and name not in only:
            continue
        stable = os.path.join(workdir, 'runs', name)
        seeded = '_s' in name
        for k in study.SEEDED_BRANCH_STEPS if seeded else study.BRANCH_STEPS:
            cooldown.run_branches(stable, [k], round(k * study.DECAY_FRACTION_OF_K),
                                  os.path.join(stable, 'cooldowns'))


def _result(path):
    with open(path) as f:
        return json.load(f)


def branch_results(workdir) -> dict[str, list[dict]]:
    """{stable run name: its finished branches' results, by k}."""
    out = {}
    for name in stable_dirs(workdir):
        root = os.path.join(workdir, 'runs', name, 'cooldowns')
        found = [_result(os.path.join(root, d, 'result.json')) for d in
                 (os.listdir(root) if os.path.isdir(root) else ())
                 if os.path.isfile(os.path.join(root, d, 'result.json'))]
        out[name] = sorted(found, key=lambda r: r['overrides']['train.steps'])
    return out


def _as_seed_repeat(row, stable_name):
    """A branch of stable_wW_sS as a seed repeat of stable_wW's branch of the same length, so
    the fits take their mean as one point (report.merge_seeds: overrides equal but the seed)."""
    if '_s' not in stable_name:
        return row
    base, seed = stable_name.rsplit('_s', 1)
    overrides = dict(row['overrides'], seed=int(seed))
    overrides['branch_of'] = os.path.join(os.path.dirname(overrides['branch_of']), base)
    return dict(row, overrides=overrides)


def lr_curves(workdir) -> dict[tuple[str, int], dict[float, float]]:
    """{(parametrization, width): {lr: loss}} of the lr_* runs. At the base width both
    parametrizations are the same model (m = 1), so its runs count as 'both'."""
    curves = collections.defaultdict(dict)
    for d in run_dirs(workdir, 'lr_'):
        r = _result(os.path.join(workdir, 'runs', d, 'result.json'))
        o = r['overrides']
        loss = float('inf') if r.get('diverged') or r.get('loss') is None else r['loss']
        kind = 'µP' if o.get('model.mup_base_width', study.BASE_WIDTH) else 'standard'
        if o['model.embed_dim'] == study.BASE_WIDTH:
            kind = 'both'
        curves[kind, o['model.embed_dim']][o['optim.lr']] = loss
    return dict(curves)


def _order(key):
    kind, width = key
    return ('both', 'µP', 'standard').index(kind), width


def lr_table(curves) -> str:
    lrs = sorted({lr for c in curves.values() for lr in c})
    base = fit.best_log2_lr(curves['both', study.BASE_WIDTH])
    lines = ['| width | parametrization | ' + ' | '.join(f'lr 2^{math.log2(lr):.0f}' for lr in lrs)
             + ' | fitted best log2 lr | off the base width |',
             '|---|---|' + '---|' * len(lrs) + '---|---|']
    for kind, w in sorted(curves, key=_order):
        c = curves[kind, w]
        best = min(c, key=c.get)
        cells = [('' if lr not in c else f'**{c[lr]:.5f}**' if lr == best else f'{c[lr]:.5f}')
                 for lr in lrs]
        fitted = fit.best_log2_lr(c)
        label = 'µP = standard' if kind == 'both' else kind
        lines.append(f'| {w} | {label} | ' + ' | '.join(cells)
                     + f' | {fitted:.2f} | {fitted - base:+.2f} |')
    return '\n'.join(lines)


def lr_plot(curves, path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    # a diverging rate would flatten every curve: losses above 2x the best sit on the top edge
    top = 2 * min(min(c.values()) for c in curves.values())
    for kind, w in sorted(curves, key=_order):
        lrs = sorted(curves[kind, w])
        line, = ax.plot(lrs, [min(curves[kind, w][lr], top) for lr in lrs], marker='o',
                        linestyle='--' if kind == 'standard' else '-',
                        label=f'width {w} ({"µP = standard" if kind == "both" else kind})')
        off = [lr for lr in lrs if curves[kind, w][lr] > top]
        ax.plot(off, [top] * len(off), marker='^', markersize=9, linestyle='',
                color=line.get_color())
    ax.set_ylim(top=top * 1.02)
    ax.set_xscale('log', base=2)
    ax.set_xlabel(f'learning rate (µP base width {study.BASE_WIDTH})')
    ax.set_ylabel(f"{study.REPORT['units']}, test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cosine_results(workdir) -> dict[int, list[float]]:
    out = collections.defaultdict(list)
    for d in run_dirs(workdir, 'cosine_'):
        r = _result(os.path.join(workdir, 'runs', d, 'result.json'))
        out[r['overrides']['train.steps']].append(r['loss'])
    return dict(out)


def _spread(losses) -> str:
    if not losses:
        return 'not run'
    text = f'{np.mean(losses):.5f}'
    if len(losses) > 1:
        text += f' ±{(max(losses) - min(losses)) / 2:.5f} ({len(losses)} seeds)'
    return text


def cooldown_table(workdir, branches_by_run) -> str:
    """The cosine runs against the branches of the same total length, width SEEDED_WIDTH, and
    the compute each way for all the lengths the stable run serves."""
    w = study.SEEDED_WIDTH
    runs = [n for n in branches_by_run if n.startswith(f'stable_w{w}')]
    cosine = cosine_results(workdir)
    lines = ['| steps (k + decay) | cosine from scratch | cooldown branch | branch - cosine |',
             '|---|---|---|---|']
    for steps in study.COSINE_STEPS:
        branch = [r['loss'] for n in runs for r in branches_by_run[n]
                  if r['overrides']['train.steps'] == steps]
        gap = (f'{np.mean(branch) - np.mean(cosine[steps]):+.5f}'
               if branch and cosine.get(steps) else '')
        lines.append(f'| {steps} | {_spread(cosine.get(steps, []))} | {_spread(branch)} | {gap} |')
    lengths = [round(k * (1 + study.DECAY_FRACTION_OF_K)) for k in study.BRANCH_STEPS]
    wsd = study.STABLE_STEPS + sum(round(k * study.DECAY_FRACTION_OF_K)
                                   for k in study.BRANCH_STEPS)
    lines += ['', (f'Training all {len(lengths)} lengths ({", ".join(map(str, lengths))} '
                   f'steps) from scratch with cosine takes {sum(lengths)} steps; one stable run '
                   f'and its branches take {wsd} ({wsd / sum(lengths):.0%}).')]
    return '\n'.join(lines)


def extrapolation_table(rows) -> str:
    """L(N, D) fitted without the widest model, predicting each of its branches: extrapolation
    in N by one width step (the report's own check holds out one run only)."""
    runs = report.merge_seeds([r for r in rows if report.usable(r)])
    N, D, L = (np.array([r[k] for r in runs], np.float64) for k in ('N', 'D', 'loss'))
    widest = N == N.max()
    law = fit.fit_chinchilla(N[~widest], D[~widest], L[~widest])
    p = law.params
    lines = [(f'L(N, D) = {p["E"]:.4g} + {p["A"]:.4g} / N^{p["alpha"]:.3f} + {p["B"]:.4g} / '
             f'D^{p["beta"]:.3f}, fitted to the {int((~widest).sum())} points of the narrower '
             f'widths (converged: {law.converged}), predicting the widest model (N = '
             f'{N.max():.3g}), which it never saw:'), '',
             '| run | D | measured | predicted | error |', '|---|---|---|---|---|']
    for i in np.flatnonzero(widest)[np.argsort(D[widest])]:
        predicted = float(law.predict(N[i], D[i]))
        lines.append(f'| {runs[i]["name"]} | {D[i]:.3g} | {L[i]:.5f} | {predicted:.5f} | '
                     f'{100 * (predicted / L[i] - 1):+.1f}% |')
    return '\n'.join(lines)


def write(workdir, out) -> None:
    os.makedirs(out, exist_ok=True)
    curves = lr_curves(workdir)
    if curves:
        with open(os.path.join(out, 'lr_transfer.md'), 'w') as f:
            f.write(lr_table(curves) + '\n')
        lr_plot(curves, os.path.join(out, 'lr_transfer.png'))
        print(lr_table(curves))
    lr_rows = [_result(os.path.join(workdir, 'runs', d, 'result.json'))
               for d in run_dirs(workdir, 'lr_')]
    with open(os.path.join(out, 'lr_results.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in lr_rows)
    by_run = branch_results(workdir)
    rows = [_as_seed_repeat(dict(r, name=f'{n}/{r["name"]}'), n)
            for n, rs in by_run.items() for r in rs]
    if not rows:
        return
    with open(os.path.join(out, 'results.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    text = cooldown_table(workdir, by_run)
    with open(os.path.join(out, 'cooldown_vs_cosine.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    text = extrapolation_table(rows)
    with open(os.path.join(out, 'extrapolation.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    report.write_report(rows, out, title=f"Scaling laws: {study.REPORT['title']}",
                        literature=False, units=study.REPORT['units'])
    print(f'wrote {out}')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('study', help='the sweep file experiments/scaling/STUDY.py')
    p.add_argument('command', choices=('branches', 'report'))
    p.add_argument('workdir')
    p.add_argument('runs', nargs='*', help='branches: only these stable runs (default: all)')
    p.add_argument('--out', help='report: the folder (default experiments/results/STUDY)')
    args = p.parse_args()
    global study
    path = os.path.join(HERE, 'scaling', f'{args.study}.py')
    if not os.path.isfile(path):
        p.error(f'no study {path}')
    study = load_file_module(path, 'sweep', '')
    if args.command == 'branches':
        branches(args.workdir, args.runs)
    else:
        write(args.workdir, args.out or os.path.join('experiments', 'results', args.study))


if __name__ == '__main__':
    main()
