"""Fitting scaling laws: power laws, the Chinchilla joint law, IsoFLOP profiles, bootstrap CIs.

Forms (losses in nats/token, N non-embedding parameters, D tokens, C training FLOPs):
    power law       L(x)    = E + A x^-alpha           (E = 0 for the pure power law)
    Chinchilla      L(N, D) = E + A N^-alpha + B D^-beta
    IsoFLOP         N_opt(C) = k C^a                   (Hoffmann et al. 2022, Approach 2)

The power law and Chinchilla forms are fitted as in Hoffmann et al. 2022, Approach 3: predict
log L = logsumexp(log A - alpha log N, log B - beta log D, log E), minimise a Huber loss
(delta = 1e-3) of the log residuals with L-BFGS from a grid of starts and keep the best. Besiroglu
et al. 2024 found that the published Chinchilla fit had not converged, so every result says
whether the optimiser reported success, the gradient norm at the optimum and how many starts
agree on the best objective. Everything is float64 and nothing is rounded before fitting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, special

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # an optional nicety (scikit-learn brings it): see _fit_logsumexp
    def threadpool_limits(limits=None):
        return contextlib.nullcontext()

HUBER_DELTA = 1e-3          # Hoffmann et al. 2022, Approach 3
GRAD_TOL = 1e-5             # |gradient| at the optimum below which a fit counts as converged
AGREE_RTOL = 1e-4           # starts whose objective is this close to the best "agree" with it
AGREE_ATOL = 1e-9
MAXITER = 5000              # L-BFGS-B iterations per start
FTOL = 1e-15                # a stalled objective must not end a fit before its gradient is small
PGTOL = 1e-7                # L-BFGS-B's own test (max |projected gradient|, centred coordinates)
POLISH_RESTARTS = 3         # restarts of the best start when it stopped unconverged

# Starting grid for the Chinchilla fit. Hoffmann et al. used alpha, beta in {0, .5, 1, 1.5, 2},
# e in {-1, -.5, 0, .5, 1}, a, b in {0, 5, ..., 25} (4500 starts); this coarser grid spans the
# same box at under 1/25 of the cost. Pass `grid=` for the paper's.
CHINCHILLA_GRID = {
    'a': (0.0, 10.0, 20.0),
    'alpha': (0.2, 0.6, 1.2),
    'b': (0.0, 10.0, 20.0),
    'beta': (0.2, 0.6, 1.2),
    'e': (-1.0, 0.5),
}
# Power-law starts: exponents, and E as a fraction of the smallest observed loss; log A then
# follows by least squares, which makes the starts independent of the units of x.
POWER_LAW_ALPHAS = (0.03, 0.1, 0.3, 1.0)
POWER_LAW_E_FRACTIONS = (1e-3, 0.5, 0.9)


class FitError(ValueError):
    """The data cannot support the requested fit (too few points, degenerate groups)."""


@dataclasses.dataclass
class FitResult:
    form: str                   # 'power_law', 'pure_power_law', 'chinchilla' or 'isoflop'
    params: dict                # natural units: A, alpha, E (, B, beta) or a, log10_k
    loss: float                 # final objective: mean Huber(log residual) / delta
    converged: bool             # optimiser success and |gradient| <= GRAD_TOL
    success: bool = True        # what the optimiser reported for the best start
    grad_norm: float = 0.0      # in the (log A, alpha, log B, beta, log E) parametrisation
    n_starts: int = 1
    n_starts_agreeing: int = 1  # starts that ended within AGREE_RTOL of the best objective
    n_points: int = 0
    message: str = ''
    details: dict = dataclasses.field(default_factory=dict)

    def predict(self, *x):
        return PREDICT[self.form](self.params, *x)

    def summary(self) -> str:
        params = ', '.join(f'{k}={v:.4g}' for k, v in self.params.items())
        status = 'converged' if self.converged else 'NOT converged'
        return (f'{self.form}: {params}; objective {self.loss:.3e}, {status} (optimiser success '
                f'{self.success}, |grad| {self.grad_norm:.1e}, {self.n_starts_agreeing}/'
                f'{self.n_starts} starts agree, {self.n_points} points)')


def predict_power_law(params, x):
    x = np.asarray(x, np.float64)
    return params.get('E', 0.0) + params['A'] * x ** -params['alpha']


def predict_chinchilla(params, N, D):
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params['E'] + params['A'] * N ** -params['alpha'] + params['B'] * D ** -params['beta']


def predict_isoflop(params, C):
    """Compute-optimal N for budget C from an IsoFLOP fit (D_opt = C / (6 N_opt))."""
    return 10.0 ** (params['log10_k'] + params['a'] * np.log10(np.asarray(C, np.float64)))


PREDICT = {'power_law': predict_power_law, 'pure_power_law': predict_power_law,
           'chinchilla': predict_chinchilla, 'isoflop': predict_isoflop}


# ---------------------------------------------------------------------------------------------
# The shared fitter: log L = logsumexp(a_k - alpha_k u_k for each term k [, e]) with u_k = log x_k,
# theta = (a_1, alpha_1, ..., a_K, alpha_K [, e]).

def _objective(theta, u, log_y, irreducible, delta):
    """Mean Huber loss of the log residuals over delta, and its gradient in theta.

    Dividing by delta puts the objective on the scale of a log residual, so the optimiser's
    tolerances and GRAD_TOL mean the same for any delta and any number of points.
    """
    k = len(u)
    z = [theta[2 * i] - theta[2 * i + 1] * u[i] for i in range(k)]
    if irreducible:
        z.append(np.full_like(log_y, theta[-1]))
    z = np.stack(z)
    log_pred = special.logsumexp(z, axis=0)
    r = log_pred - log_y
    obj = np.mean(special.huber(delta, r)) / delta
    weight = np.exp(z - log_pred)                 # d log_pred / d z_k (a softmax over terms)
    dr = np.clip(r, -delta, delta) / delta         # Huber'(r) / delta
    grad = []
    for i in range(k):
        g = dr * weight[i]
        grad += [np.mean(g), -np.mean(g * u[i])]
    if irreducible:
        grad.append(np.mean(dr * weight[-1]))
    return obj, np.array(grad)


def _fit_logsumexp(form, names, u, log_y, starts, irreducible, delta, maxiter):
    """L-BFGS-B from every start; the best by objective, with its convergence diagnostics.

    The optimiser works on centred logs (a_k' = a_k - alpha_k mean(u_k)): the same minimum, but
    log A and alpha are no longer strongly correlated, which L-BFGS converges on far faster.
    Diagnostics are computed afterwards in the uncentred parametrisation.
    """
    k = len(u)
    centre = [float(np.mean(ui)) for ui in u]
    uc = [ui - c for ui, c in zip(u, centre)]
    # exponents >= 0: a negative one would make the "reducible" term grow with scale
    bounds = [(None, None), (0.0, None)] * k + ([(None, None)] if irreducible else [])

    def to_centred(theta):
        theta = np.array(theta, np.float64)
        for i in range(k):
            theta[2 * i] -= theta[2 * i + 1] * centre[i]
        return theta

    def from_centred(theta):
        theta = np.array(theta, np.float64)
        for i in range(k):
            theta[2 * i] += theta[2 * i + 1] * centre[i]
        return theta

    def minimize(x0):
        return optimize.minimize(_objective, x0, args=(uc, log_y, irreducible, delta), jac=True,
                                 method='L-BFGS-B', bounds=bounds,
                                 options={'maxiter': maxiter, 'ftol': FTOL, 'gtol': PGTOL})

    def diagnose(res):
        """Objective, gradient norm (uncentred, bound-projected) and parameters of a result."""
        theta = from_centred(res.x)
        obj, grad = _objective(theta, u, log_y, irreducible, delta)
        # an exponent held at its bound 0 has a legitimately positive gradient: project it out
        at_bound = np.zeros_like(grad, bool)
        at_bound[1:2 * k:2] = (theta[1:2 * k:2] <= 0.0) & (grad[1:2 * k:2] > 0)
        return obj, float(np.linalg.norm(np.where(at_bound, 0.0, grad))), theta

    # One BLAS thread: L-BFGS-B's tiny BLAS calls are 30x slower when OpenBLAS wakes its threads
    # on a machine whose cores are busy (measured on 2 loaded cores).
    with threadpool_limits(1):
        runs = []
        for start in starts:
            x0 = to_centred(start)
            x0[1:2 * k:2] = np.maximum(x0[1:2 * k:2], 0.0)
            res = minimize(x0)
            if np.isfinite(res.fun) and np.all(np.isfinite(res.x)):
                runs.append(res)
        if not runs:
            raise FitError(f'{form}: no start gave a finite objective')
        objs = np.array([r.fun for r in runs])
        best = runs[int(np.argmin(objs))]
        obj, grad_norm, theta = diagnose(best)
        # Near the optimum the Huber loss's jumps in curvature (|r| = delta) can end L-BFGS in a
        # failed line search or a stalled objective before the gradient is small; restarting
        # from where it stopped, with its curvature memory cleared, usually finishes the job.
        for _ in range(POLISH_RESTARTS):
            if best.success and grad_norm <= GRAD_TOL:
                break
            res = minimize(best.x)
            if not (np.isfinite(res.fun) and res.fun <= best.fun):
                break
            best = res
            obj, grad_norm, theta = diagnose(best)
    agree = int(np.sum(objs <= min(objs.min(), best.fun) + AGREE_RTOL * abs(best.fun)
                       + AGREE_ATOL))
    params = {}
    for i, (a_name, alpha_name) in enumerate(names[:k]):
        params[a_name] = float(np.exp(theta[2 * i]))
        params[alpha_name] = float(theta[2 * i + 1])
    if irreducible:
        params['E'] = float(np.exp(theta[-1]))
    return FitResult(form=form, params=params, loss=float(obj),
                     converged=bool(best.success) and grad_norm <= GRAD_TOL,
                     success=bool(best.success), grad_norm=grad_norm, n_starts=len(runs),
                     n_starts_agreeing=agree, n_points=len(log_y), message=str(best.message))


def _as_positive(name, x):
    x = np.asarray(x, np.float64).ravel()
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise FitError(f'{name} must be finite and positive')
    return x


def _theta_from_params(params, names, irreducible):
    theta = []
    for a_name, alpha_name in names:
        theta += [np.log(params[a_name]), params[alpha_name]]
    if irreducible:
        theta.append(np.log(max(params.get('E', 0.0), 1e-12)))
    return np.array(theta)


def _starts_from_init(init, names, irreducible):
    inits = [init] if isinstance(init, dict) else list(init)
    return [_theta_from_params(p, names, irreducible) for p in inits]


def fit_power_law(x, y, irreducible: bool = True, init=None, alphas=POWER_LAW_ALPHAS,
                  e_fractions=POWER_LAW_E_FRACTIONS, delta: float = HUBER_DELTA,
                  maxiter: int = MAXITER) -> FitResult:
    """Fit y = E + A x^-alpha (E = 0 when irreducible=False) by Huber loss on log residuals.

    init: a params dict (or a list of them) to start from instead of the grid, e.g. a full-data
    optimum when bootstrapping.
    """
    x, y = _as_positive('x', x), _as_positive('y', y)
    if x.shape != y.shape:
        raise FitError('x and y differ in length')
    n_params = 3 if irreducible else 2
    if len(np.unique(x)) < n_params:
        raise FitError(f'a {n_params}-parameter power law needs {n_params} distinct x, '
                       f'got {len(np.unique(x))}')
    u, log_y = np.log(x), np.log(y)
    names = [('A', 'alpha')]
    if init is not None:
        starts = _starts_from_init(init, names, irreducible)
    else:
        starts = []
        for alpha in alphas:
            for frac in (e_fractions if irreducible else (0.0,)):
                e_val = frac * y.min()
                # least-squares log A for this alpha and E: log(y - E) = a - alpha log x
                a = float(np.mean(np.log(y - e_val) + alpha * u))
                starts.append([a, alpha] + ([np.log(e_val)] if irreducible else []))
        if not irreducible:  # the ordinary log-log regression is the natural start
            slope, intercept = np.polyfit(u, log_y, 1)
            starts.append([intercept, max(-slope, 0.0)])
    form = 'power_law' if irreducible else 'pure_power_law'
    return _fit_logsumexp(form, names, [u], log_y, starts, irreducible, delta, maxiter)


def fit_chinchilla(N, D, L, init=None, grid: dict | None = None, delta: float = HUBER_DELTA,
                   maxiter: int = MAXITER) -> FitResult:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3).

    grid: dict of start values for 'a', 'alpha', 'b', 'beta', 'e' (a = log A, b = log B,
    e = log E); default CHINCHILLA_GRID. init: params dict(s) to start from instead.
    """
    N, D, L = _as_positive('N', N), _as_positive('D', D), _as_positive('L', L)
    if not N.shape == D.shape == L.shape:
        raise FitError('N, D and L differ in length')
    n_distinct = len({(n, d) for n, d in zip(N, D)})
    if n_distinct < 5 or len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise FitError(f'the Chinchilla law has 5 parameters: it needs >= 5 distinct (N, D) '
                       f'with >= 2 distinct N and D, got {n_distinct}')
    names = [('A', 'alpha'), ('B', 'beta')]
    if init is not None:
        starts = _starts_from_init(init, names, True)
    else:
        g = {**CHINCHILLA_GRID, **(grid or {})}
        starts = [list(s) for s in itertools.product(g['a'], g['alpha'], g['b'], g['beta'],
                                                      g['e'])]
    return _fit_logsumexp('chinchilla', names, [np.log(N), np.log(D)], np.log(L), starts,
                          True, delta, maxiter)


# ---------------------------------------------------------------------------------------------
# Bootstrap

@dataclasses.dataclass
class BootstrapResult:
    fit: FitResult                      # the fit to all the data
    samples: dict                       # name -> values over the converged resamples
    intervals: dict                     # name -> (low, high) percentile interval
    level: float
    n_boot: int
    n_failed: int                       # resamples that raised FitError or did not converge

    def interval(self, fn: Callable[[dict], np.ndarray]) -> tuple[float, float]:
        """Percentile interval of a derived quantity, fn(samples) -> one value per resample."""
        return _percentiles(np.asarray(fn(self.samples), np.float64), self.level)


def _percentiles(values, level):
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float('nan'), float('nan'))
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def _resample(rng, n, groups):
    if groups is None:
        return rng.integers(0, n, n)
    # stratified: every group keeps its size, so no resample loses a whole budget
    idx = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        idx.append(rng.choice(members, size=members.size, replace=True))
    return np.concatenate(idx)


def bootstrap(fit_fn: Callable[..., FitResult], *arrays, n_boot: int = 200, seed: int = 0,
              level: float = 0.95, groups=None, warm_start: bool = True,
              full: FitResult | None = None, **fit_kwargs) -> BootstrapResult:
    """Percentile intervals for every parameter of fit_fn(*arrays), resampling runs with
    replacement (within each of `groups` when given).

    warm_start: refit each resample from the full-data optimum (fit_fn must accept init=), one
    L-BFGS run instead of a grid. Resamples that raise FitError or do not converge are skipped
    and counted in n_failed.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if groups is not None:
        groups = np.asarray(groups)
    if full is None:
        full = fit_fn(*arrays, **fit_kwargs)
    kwargs = dict(fit_kwargs, init=full.params) if warm_start else fit_kwargs
    rng = np.random.default_rng(seed)
    rows, failed = [], 0
    for _ in range(n_boot):
        idx = _resample(rng, n, groups)
        try:
            res = fit_fn(*(a[idx] for a in arrays), **kwargs)
        except FitError:
            failed += 1
            continue
        if not res.converged:
            failed += 1
            continue
        rows.append(res.params)
    samples = {k: np.array([r[k] for r in rows], np.float64) for k in full.params}
    intervals = {k: _percentiles(v, level) for k, v in samples.items()}
    return BootstrapResult(fit=full, samples=samples, intervals=intervals, level=level,
                           n_boot=n_boot, n_failed=failed)


# ---------------------------------------------------------------------------------------------
# IsoFLOP profiles (Hoffmann et al. 2022, Approach 2)

@dataclasses.dataclass
class Parabola:
    """loss = c[0] x^2 + c[1] x + c[2] with x = log10 N, for the runs of one compute budget."""
    budget: float
    coeffs: np.ndarray
    n_runs: int
    n_range: tuple                      # smallest and largest sampled N
    positive_curvature: bool
    inside: bool                        # the minimum lies within the sampled N range
    n_opt: float                        # nan without positive curvature
    loss_opt: float

    @property
    def d_opt(self) -> float:
        return self.budget / (6.0 * self.n_opt)

    def __call__(self, N):
        return np.polyval(self.coeffs, np.log10(np.asarray(N, np.float64)))


PARABOLA_WINDOW = 5


def fit_parabola(N, L, budget: float, window: int = PARABOLA_WINDOW) -> Parabola:
    """A parabola in log10 N through the `window` sizes around the lowest loss (all of them when
    there are fewer). The parabola is a local approximation: over a 50x range of sizes a measured
    profile was lopsided enough that a parabola through all of it put its minimum 7x below the
    best size (tests/test_scaling_fit.py)."""
    N, L = _as_positive('N', N), np.asarray(L, np.float64)
    if len(np.unique(N)) < 3:
        raise FitError(f'budget {budget:.3g}: a parabola needs >= 3 distinct sizes, '
                       f'got {len(np.unique(N))}')
    order = np.argsort(N, kind='stable')
    N, L = N[order], L[order]
    if len(N) > window:
        lo = int(np.clip(np.argmin(L) - window // 2, 0, len(N) - window))
        N, L = N[lo:lo + window], L[lo:lo + window]
    x = np.log10(N)
    c = np.polyfit(x, L, 2)
    positive = bool(c[0] > 0)
    x_opt = -c[1] / (2.0 * c[0]) if positive else float('nan')
    inside = positive and bool(x.min() <= x_opt <= x.max())
    n_opt = 10.0 ** x_opt if positive else float('nan')
    loss_opt = float(np.polyval(c, x_opt)) if positive else float('nan')
    return Parabola(budget=float(budget), coeffs=c, n_runs=len(N),
                    n_range=(float(N.min()), float(N.max())), positive_curvature=positive,
                    inside=inside, n_opt=float(n_opt), loss_opt=loss_opt)


def best_log2_lr(curve: dict) -> float:
    """log2 of the best learning rate of {lr: loss} on a grid even in log2(lr): the vertex of
    the parabola through the lowest loss and its two neighbours (less noisy than the grid's
    argmin); the grid point where it lies at the grid's end or beside a diverged run (loss inf)."""
    lrs = sorted(curve)
    i = min(range(len(lrs)), key=lambda j: curve[lrs[j]])
    if i in (0, len(lrs) - 1) or not np.isfinite([curve[lrs[i - 1]], curve[lrs[i + 1]]]).all():
        return float(np.log2(lrs[i]))
    x = np.log2([lrs[i - 1], lrs[i], lrs[i + 1]])
    y = [curve[lrs[j]] for j in (i - 1, i, i + 1)]
    curvature = y[0] - 2 * y[1] + y[2]     # positive: the middle one is the lowest
    return float(x[1] + 0.5 * (y[0] - y[2]) / curvature * (x[2] - x[1]))


def isoflop_parabolas(N, L, budget) -> tuple[list, list]:
    """One parabola per budget with >= 3 distinct sizes; and notes on the budgets skipped."""
    N, L = np.asarray(N, np.float64), np.asarray(L, np.float64)
    budget = np.asarray(budget, np.float64)
    parabolas, notes = [], []
    for b in np.unique(budget[np.isfinite(budget)]):
        sel = budget == b
        try:
            parabolas.append(fit_parabola(N[sel], L[sel], b))
        except FitError as e:
            notes.append(str(e))
    return parabolas, notes


def fit_isoflop(N, L, budget, init=None, min_budgets: int = 3,
                require_inside: bool = True) -> FitResult:
    """Fit log10 N_opt = a log10 C + log10_k across budgets from the IsoFLOP parabolas' minima.

    Budgets whose parabola curves downwards, or (require_inside) whose minimum lies outside the
    sampled sizes, are left out and named in details['notes']; fewer than min_budgets usable
    budgets raise FitError. init is accepted for bootstrap() and unused (the fit is closed-form).
    """
    del init
    parabolas, notes = isoflop_parabolas(N, L, budget)
    used = []
    for p in parabolas:
        if not p.positive_curvature:
            notes.append(f'budget {p.budget:.3g}: the parabola curves downwards; left out')
        elif not p.inside:
            where = f'N_opt {p.n_opt:.3g} outside the sampled {p.n_range[0]:.3g}..' \
                    f'{p.n_range[1]:.3g}'
            if require_inside:
                notes.append(f'budget {p.budget:.3g}: {where}; left out')
            else:
                notes.append(f'budget {p.budget:.3g}: {where} (extrapolated)')
                used.append(p)
        else:
            used.append(p)
    min_budgets = max(min_budgets, 2)   # a line through one point says nothing
    if len(used) < min_budgets:
        raise FitError(f'IsoFLOP needs >= {min_budgets} budgets with a usable parabola, got '
                       f'{len(used)}' + (': ' + '; '.join(notes) if notes else ''))
    log_c = np.log10([p.budget for p in used])
    log_n = np.log10([p.n_opt for p in used])
    slope, intercept = np.polyfit(log_c, log_n, 1)
    rms = float(np.sqrt(np.mean((np.polyval([slope, intercept], log_c) - log_n) ** 2)))
    return FitResult(form='isoflop', params={'a': float(slope), 'log10_k': float(intercept)},
                     loss=rms, converged=all(p.inside for p in used), n_points=len(used),
                     message='closed-form least squares',
                     details={'parabolas': parabolas, 'used': used, 'notes': notes})


# ---------------------------------------------------------------------------------------------
# Selections of runs for the one-variable laws

def lower_envelope(x, L, rtol: float = 0.05) -> np.ndarray:
    """Indices (by increasing x) of the runs that beat every run with smaller or about equal x:
    the best loss reachable with at most x (the compute-efficient frontier when x = C).

    x within `rtol` of each other count as equal: the runs of one compute budget differ in C by
    the rounding of their step counts, and the worst of them must not pass for a frontier point
    because its steps rounded down."""
    x, L = np.asarray(x, np.float64), np.asarray(L, np.float64)
    keep, best = [], np.inf
    for i in np.lexsort((L, x)):        # by x, ties by loss
        peers = np.abs(x - x[i]) <= rtol * x[i]
        if L[i] < best and L[i] <= L[peers].min():
            keep.append(i)
            best = L[i]
    return np.array(keep, dtype=int)


def best_trained(N, D, L) -> np.ndarray:
    """For each distinct N, the index of the run that saw the most tokens (ties: lowest loss)."""
    N, D, L = (np.asarray(a, np.float64) for a in (N, D, L))
    idx = []
    for n in np.unique(N):
        members = np.flatnonzero(N == n)
        idx.append(members[np.lexsort((L[members], -D[members]))[0]])
    return np.array(idx, dtype=int)


def fit_frontier(C, L, irreducible: bool = True, **kwargs) -> FitResult:
    """Power law fitted to the lower envelope of loss against compute."""
    idx = lower_envelope(C, L)
    res = fit_power_law(np.asarray(C)[idx], np.asarray(L)[idx], irreducible=irreducible,
                        **kwargs)
    res.details['indices'] = idx
    return res


# ---------------------------------------------------------------------------------------------
# Held-out check

@dataclasses.dataclass
class Holdout:
    index: int                          # the run held out
    criterion: str
    predicted: float
    measured: float
    fit: FitResult
    law: str = 'L(N, D) = E + A/N^alpha + B/D^beta'

    @property
    def abs_error(self) -> float:
        return self.predicted - self.measured

    @property
    def rel_error(self) -> float:
        return (self.predicted - self.measured) / self.measured


def holdout_index(N, C, which: str = 'largest_N') -> int:
    N, C = np.asarray(N, np.float64), np.asarray(C, np.float64)
    if which == 'largest_N':
        return int(np.lexsort((C, N))[-1])      # largest N, ties: the most compute
    if which == 'largest_C':
        return int(np.lexsort((N, C))[-1])
    raise ValueError(f'holdout must be largest_N or largest_C, got {which!r}')


def holdout_chinchilla(N, D, L, C, which: str = 'largest_N', **fit_kwargs) -> Holdout:
    """Fit the Chinchilla law to every run but one (the largest N or C) and predict that one."""
    N, D, L = (np.asarray(a, np.float64) for a in (N, D, L))
    i = holdout_index(N, C, which)
    rest = np.arange(len(N)) != i
    res = fit_chinchilla(N[rest], D[rest], L[rest], **fit_kwargs)
    return Holdout(index=i, criterion=which, predicted=float(res.predict(N[i], D[i])),
                   measured=float(L[i]), fit=res)


def holdout_power_law(N, L, **fit_kwargs) -> Holdout:
    """Fit L(N) = E + A N^-alpha to every run but the largest and predict that one: the check
    for a sweep over sizes at one data budget, where the joint law cannot be fitted."""
    N, L = np.asarray(N, np.float64), np.asarray(L, np.float64)
    i = int(np.argmax(N))
    rest = np.arange(len(N)) != i
    res = fit_power_law(N[rest], L[rest], irreducible=True, **fit_kwargs)
    return Holdout(index=i, criterion='largest_N', predicted=float(res.predict(N[i])),
                   measured=float(L[i]), fit=res, law='L(N) = E + A N^-alpha')


def chinchilla_optimal_exponent(params) -> float:
    """N_opt ~ C^a with a = beta / (alpha + beta) implied by a Chinchilla-form fit."""
    return params['beta'] / (params['alpha'] + params['beta'])


def power_law_fits(x, y, n_boot: int = 200, seed: int = 0,
                   forms: Sequence[bool] = (False, True)) -> dict:
    """Bootstrap fits of the pure power law (irreducible=False) and with E, where the points
    allow: {'pure_power_law' | 'power_law': BootstrapResult or the FitError's message}."""
    out = {}
    for irreducible in forms:
        key = 'power_law' if irreducible else 'pure_power_law'
        try:
            out[key] = bootstrap(fit_power_law, x, y, n_boot=n_boot, seed=seed,
                                 irreducible=irreducible)
        except FitError as e:
            out[key] = str(e)
    return out
