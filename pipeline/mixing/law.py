"""Fit the data mixing law of Ye et al. (2024, arXiv 2403.16952) to proxy results, and say when not to trust it.

The law: after training on proportions ``r`` of M sources, the metric (a loss, or an error = 1 - accuracy) of
evaluation domain i is ``L_i(r) = c_i + k_i * exp(sum_j t_ij * r_j)``. With two sources it is
``L(r) = c + exp(k*r + b)`` in one source's share ``r``: ``log(L - c)`` is linear in ``r``. ``c`` is the part of
the metric no mixture removes.

The fit follows DESIGN.md section 6 in three steps:

1. a grid on ``c`` in ``[0, min L)`` keeps the ``c`` under which ``log(L - c)`` is most linear in the proportions
   (largest ``|corr|``, or R^2 with more than two sources), the authors' own procedure;
2. at that ``c`` the exponential is fitted by Huber least squares (the authors' fit; kept as ``initial``, and what
   the published-numbers test compares with their parameters);
3. ``(c, k, b)`` are refined together by Huber least squares from several starts, the lowest cost wins.

Proxy runs are few and noisy, and an exponential with a free floor fits almost anything through four points.
So every fit carries its residuals, a leave-one-out error (refit without each point, predict it) and a list of
``problems``; a fit with any problem is not ``reliable`` and the caller must not take its share on trust.

With M sources the proportions sum to 1, so one exponent is redundant: the last source's ``t`` is fixed at 0 and
the others are relative to it. For two sources this is exactly the two-domain form (``k = t``, ``b = log k_i``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

TWO_DOMAIN = "two-domain"
MULTI_DOMAIN = "multi-domain"
_EXP_MAX = 50.0  # exp(50) ~ 5e21 is far beyond any loss; capping keeps squared residuals finite on bad starts


@dataclass(frozen=True)
class FitOptions:
    """How hard to fit and how strict to be. Defaults follow the authors' notebooks where they have one."""

    grid_size: int = 1000  # c candidates in [0, min L): the authors use 1000
    huber_delta: float = 0.02  # residual (metric units) where Huber turns linear; the authors use 0.02 on losses
    refine_starts: tuple[float, ...] = (
        0.5,
        0.9,
        0.99,
    )  # extra starts besides the grid fit: c at these fractions of min L
    max_loo_relative: float = 0.25  # leave-one-out RMSE above this fraction of the metric's range: unreliable
    monotone_tolerance: float = 0.0  # a reversal of the metric along the share larger than this: unreliable
    c_floor_relative: float = 1e-3  # c below this fraction of min L has collapsed to 0: the floor is not identified


@dataclass(frozen=True)
class LawFit:
    """One evaluation domain's fitted law, the points it was fitted on and what is wrong with it, if anything.

    Parameters are ``c``, ``b`` and ``t`` (one per source; the last source's is 0 in the multi-domain form).
    Two-domain: ``L(r) = c + exp(t[0] * r + b)``, so ``k`` is ``t[0]``. Multi-domain: ``k_i = exp(b)``.
    ``residuals`` and ``loo_errors`` are prediction minus observation, point by point.
    """

    domain: str
    form: str
    sources: tuple[str, ...]
    c: float
    b: float
    t: tuple[float, ...]
    proportions: tuple[tuple[float, ...], ...]
    values: tuple[float, ...]
    residuals: tuple[float, ...]
    loo_errors: tuple[float, ...]
    converged: bool
    initial: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def reliable(self) -> bool:
        return not self.problems

    @property
    def k(self) -> float:
        """The two-domain slope ``k`` of ``c + exp(k*r + b)``; the multi-domain scale ``k_i = exp(b)``."""
        return self.t[0] if self.form == TWO_DOMAIN else math.exp(self.b)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals))))

    @property
    def loo_rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.loo_errors))))

    def predict(self, shares: Any) -> np.ndarray:
        """The metric at general shares (two-domain: numbers) or at proportion rows (multi-domain: (n, M))."""
        t = np.asarray(self.t[:-1] if self.form == MULTI_DOMAIN else self.t)  # the reference source's 0 is implied
        return _predict(self.c, self.b, t, _design(np.asarray(shares, dtype=float), self.form))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: parameters, fit quality, problems and every point with its residual and LOO error."""
        params: dict[str, Any] = {"c": self.c, "k": self.k, "b": self.b}
        if self.form == MULTI_DOMAIN:
            params = {"c": self.c, "k": self.k, "t": dict(zip(self.sources, self.t, strict=True))}
        fitted = np.asarray(self.values) + np.asarray(self.residuals)
        columns = (self.proportions, self.values, fitted.tolist(), self.residuals, self.loo_errors)
        points = [
            {"proportions": dict(zip(self.sources, p, strict=True)), "value": v, "fitted": f, "residual": e,
             "loo_error": _finite(loo)}
            for p, v, f, e, loo in zip(*columns, strict=True)
        ]  # fmt: skip
        if self.form == TWO_DOMAIN:
            for point in points:
                point["share"] = point.pop("proportions")["share"]
        return {
            "domain": self.domain, "form": self.form, **params, "rmse": _finite(self.rmse),
            "loo_rmse": _finite(self.loo_rmse), "converged": self.converged, "reliable": self.reliable,
            "problems": list(self.problems), "initial": self.initial, "points": points,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LawFit:
        """The inverse of :meth:`to_dict` (e.g. to re-plot or re-use a written ``mixing_law.json``)."""
        points = data["points"]
        if data["form"] == TWO_DOMAIN:
            sources, t, b = ("share",), (data["k"],), data["b"]
            proportions = tuple((p["share"],) for p in points)
        else:
            sources, t, b = tuple(data["t"]), tuple(data["t"].values()), math.log(data["k"])
            proportions = tuple(tuple(p["proportions"][s] for s in sources) for p in points)
        return cls(
            domain=data["domain"], form=data["form"], sources=sources, c=data["c"], b=b, t=t,
            proportions=proportions, values=tuple(p["value"] for p in points),
            residuals=tuple(p["residual"] for p in points), loo_errors=tuple(_nan(p["loo_error"]) for p in points),
            converged=data["converged"], initial=data.get("initial", {}), problems=tuple(data["problems"]),
        )  # fmt: skip


def fit_two_domain(
    shares: Sequence[float], values: Sequence[float], domain: str = "", options: FitOptions | None = None
) -> LawFit:
    """Fit ``L(r) = c + exp(k*r + b)`` to one evaluation domain's metric at the given shares of one source."""
    r = np.asarray(shares, dtype=float)
    return _fit(r[:, None], np.asarray(values, dtype=float), domain, TWO_DOMAIN, ("share",), options or FitOptions())


def fit_multi_domain(
    proportions: Sequence[Sequence[float]],
    values: Sequence[float],
    sources: Sequence[str],
    domain: str = "",
    options: FitOptions | None = None,
) -> LawFit:
    """Fit ``L(r) = c + k * exp(sum_j t_j r_j)`` to one evaluation domain over mixtures of ``sources``.

    ``proportions`` has one row per proxy run and one column per source; each row sums to 1.
    """
    r = np.asarray(proportions, dtype=float)
    if r.ndim != 2 or r.shape[1] != len(sources) or len(sources) < 2:
        raise ValueError(
            f"proportions: expected shape (runs, {len(sources)}) for sources {list(sources)}, got {r.shape}"
        )
    off = np.flatnonzero(np.abs(r.sum(axis=1) - 1.0) > 1e-6)
    if off.size:
        raise ValueError(f"proportions row {off[0]}: {r[off[0]].tolist()} sums to {r[off[0]].sum():g}, expected 1")
    return _fit(r, np.asarray(values, dtype=float), domain, MULTI_DOMAIN, tuple(sources), options or FitOptions())


# --- the fit ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    c: float
    b: float
    t: np.ndarray
    converged: bool
    initial: dict[str, Any]


def _fit(r: np.ndarray, y: np.ndarray, domain: str, form: str, sources: tuple[str, ...], opt: FitOptions) -> LawFit:
    _check_points(r, y, domain)
    x = _design(r if form == MULTI_DOMAIN else r[:, 0], form)
    params = _fit_params(x, y, opt)
    residuals = _predict(params.c, params.b, params.t, x) - y
    loo = _leave_one_out(x, y, opt)
    t = params.t.tolist() + ([0.0] if form == MULTI_DOMAIN else [])
    initial = dict(params.initial)
    if form == TWO_DOMAIN:
        initial["k"] = initial.pop("t")[0]
    fit = LawFit(
        domain=domain, form=form, sources=sources, c=params.c, b=params.b, t=tuple(t),
        proportions=tuple(map(tuple, r.tolist())), values=tuple(y.tolist()), residuals=tuple(residuals.tolist()),
        loo_errors=tuple(loo.tolist()), converged=params.converged, initial=initial,
    )  # fmt: skip
    return LawFit(**{**asdict(fit), "problems": tuple(_problems(fit, x, opt))})


def _check_points(r: np.ndarray, y: np.ndarray, domain: str) -> None:
    name = f"domain {domain!r}: " if domain else ""
    if len(y) != len(r):
        raise ValueError(f"{name}{len(r)} proportions but {len(y)} values")
    if not (np.isfinite(y).all() and np.isfinite(r).all()):
        raise ValueError(f"{name}proportions and values must be finite numbers")
    if (y <= 0).any():
        raise ValueError(f"{name}values must be positive (a loss, or an error = 1 - accuracy); got {y.min():g}")
    if ((r < 0) | (r > 1)).any():
        raise ValueError(f"{name}proportions must lie in [0, 1]")
    if len(np.unique(r, axis=0)) < 2:
        raise ValueError(f"{name}need results at two or more different mixtures, got {len(np.unique(r, axis=0))}")


def _design(r: np.ndarray, form: str) -> np.ndarray:
    """The regressors of ``log(L - c)``: the share itself, or every proportion but the last (the reference)."""
    return r[..., :-1] if form == MULTI_DOMAIN else r[..., None]


def _predict(c: float, b: float, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return c + np.exp(np.minimum(b + x @ t, _EXP_MAX))


def _fit_params(x: np.ndarray, y: np.ndarray, opt: FitOptions) -> _Params:
    c0, linearity = _grid_c(x, y, opt.grid_size)
    b0, t0, _ = _fit_exponential(x, y, c0, opt.huber_delta)
    initial = {"c": c0, "b": b0, "t": t0.tolist(), "linearity": linearity}  # named per form by _fit
    starts = [np.r_[c0, b0, t0]]
    for fraction in opt.refine_starts:
        c = fraction * y.min()
        starts.append(np.r_[c, _log_linear(x, y, c)])
    best = min((_refine(x, y, start, opt.huber_delta) for start in starts), key=lambda res: res.cost)
    return _Params(c=float(best.x[0]), b=float(best.x[1]), t=best.x[2:], converged=best.status > 0, initial=initial)


def _grid_c(x: np.ndarray, y: np.ndarray, size: int) -> tuple[float, float]:
    """The ``c`` in ``[0, min L)`` under which ``log(L - c)`` is most linear in ``x`` (R^2; |corr| with one column).

    The grid is the authors' (``np.linspace(0, min(y) - 1e-10, 1000)``), all candidates in one matrix product.
    """
    cs = np.linspace(0.0, y.min() - 1e-10, size)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log(y[:, None] - cs[None, :])  # (points, candidates)
    design = np.c_[np.ones(len(y)), x]
    resid = z - design @ np.linalg.lstsq(design, z, rcond=None)[0]
    centred = z - z.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - (resid**2).sum(axis=0) / (centred**2).sum(axis=0)
    r2 = np.where(np.isfinite(r2), r2, -np.inf)
    best = int(np.argmax(r2))  # first of equals: the smallest c
    return float(cs[best]), float(np.sqrt(max(r2[best], 0.0)))


def _log_linear(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """``(b, t)`` of the straight line through ``log(L - c)``: a start close to the answer."""
    design = np.c_[np.ones(len(y)), x]
    return np.linalg.lstsq(design, np.log(np.maximum(y - c, 1e-12)), rcond=None)[0]


def _fit_exponential(x: np.ndarray, y: np.ndarray, c: float, delta: float) -> tuple[float, np.ndarray, bool]:
    """The authors' step: ``exp(b + x t)`` fitted to ``L - c`` by Huber least squares, ``c`` held fixed."""
    res = least_squares(
        lambda p: np.exp(np.minimum(p[0] + x @ p[1:], _EXP_MAX)) - (y - c), _log_linear(x, y, c),
        loss="huber", f_scale=delta, x_scale="jac",
    )  # fmt: skip
    return float(res.x[0]), res.x[1:], res.status > 0


def _refine(x: np.ndarray, y: np.ndarray, start: np.ndarray, delta: float):
    """``(c, b, t)`` together by Huber least squares, ``c`` kept in ``[0, min L]``."""
    lower = np.r_[0.0, np.full(len(start) - 1, -np.inf)]
    upper = np.r_[y.min(), np.full(len(start) - 1, np.inf)]
    start = np.clip(start, lower, upper)
    return least_squares(
        lambda p: _predict(p[0], p[1], p[2:], x) - y, start, jac=lambda p: _jacobian(p, x), bounds=(lower, upper),
        loss="huber", f_scale=delta, x_scale="jac", max_nfev=2000,
    )  # fmt: skip


def _jacobian(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """d/d(c, b, t) of ``c + exp(b + x t)``: exact, so the fit does not crawl along the c-b ridge by differences."""
    e = np.exp(np.minimum(p[1] + x @ p[2:], _EXP_MAX))
    return np.c_[np.ones(len(x)), e, e[:, None] * x]


def _leave_one_out(x: np.ndarray, y: np.ndarray, opt: FitOptions) -> np.ndarray:
    """Refit without each point and predict it: how well the law predicts a share it has not seen."""
    errors = np.full(len(y), np.nan)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if len(np.unique(x[keep], axis=0)) < 2:
            continue  # the rest cannot be fitted; the NaN is reported as a problem
        p = _fit_params(x[keep], y[keep], opt)
        errors[i] = float(_predict(p.c, p.b, p.t, x[i : i + 1])[0] - y[i])
    return errors


# --- what is wrong with a fit -------------------------------------------------------------------------------------


def _problems(fit: LawFit, x: np.ndarray, opt: FitOptions) -> list[str]:
    y = np.asarray(fit.values)
    n_params = 2 + x.shape[1]
    problems = []
    if len(y) < n_params + 1:
        problems.append(f"{len(y)} points for {n_params} parameters: at least {n_params + 1} are needed")
    if fit.form == TWO_DOMAIN:
        problems += _monotone_problems(x[:, 0], y, opt.monotone_tolerance)
    if fit.c <= opt.c_floor_relative * y.min():
        problems.append(f"c collapsed to 0 (c = {fit.c:.4g}): the floor of the metric is not identified")
    elif fit.c >= y.min() * (1 - 1e-6):
        problems.append(f"c reached the smallest value ({fit.c:.4g}): the floor of the metric is not identified")
    loo = np.asarray(fit.loo_errors)
    spread = float(y.max() - y.min())
    if np.isnan(loo).any():
        problems.append("leave-one-out error could not be computed: too few distinct mixtures")
    elif fit.loo_rmse > opt.max_loo_relative * spread:
        problems.append(
            f"leave-one-out RMSE {fit.loo_rmse:.4g} is above {opt.max_loo_relative:g} of the metric's range "
            f"({spread:.4g}): the law does not predict unseen shares"
        )
    if not fit.converged:
        problems.append("the least-squares refinement did not converge")
    return problems


def _monotone_problems(r: np.ndarray, y: np.ndarray, tolerance: float) -> list[str]:
    """The two-domain law is monotone in the share; data that turn around contradict it (or are noise)."""
    shares = np.unique(r)
    means = np.array([y[r == s].mean() for s in shares])  # repeated runs at one share: their mean
    steps = np.diff(means)
    direction = np.sign(means[-1] - means[0])
    if direction == 0:
        return ["the metric is the same at the smallest and the largest share: no trend to fit"]
    against = np.flatnonzero(steps * direction < -tolerance)
    return [
        f"not monotone: the metric {'rises' if steps[i] > 0 else 'falls'} by {abs(steps[i]):.4g} from share "
        f"{shares[i]:g} to {shares[i + 1]:g} against its overall trend"
        for i in against
    ]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
