"""The law's fit recovers known parameters and flags the fits it should not be trusted on."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.mixing.law import FitOptions, LawFit, fit_multi_domain, fit_two_domain


def law(shares, c, k, b):
    return c + np.exp(k * np.asarray(shares) + b)


def test_parameters_are_recovered_from_a_known_law_plus_noise():
    rng = np.random.default_rng(11)
    shares = np.linspace(0.0, 1.0, 9)
    values = law(shares, 0.30, -2.5, -1.0) + rng.normal(0.0, 0.002, shares.size)
    fit = fit_two_domain(shares, values, "general")
    assert fit.reliable, fit.problems
    assert fit.c == pytest.approx(0.30, abs=0.02)
    assert fit.k == pytest.approx(-2.5, abs=0.15)
    assert fit.b == pytest.approx(-1.0, abs=0.05)
    assert fit.rmse < 0.004 and fit.loo_rmse < 0.01
    assert fit.predict(shares) == pytest.approx(values + np.asarray(fit.residuals))  # residual = fitted - observed


def test_a_rising_domain_is_recovered_too():
    """The plant metric rises as the general share grows: k > 0 in the same form."""
    rng = np.random.default_rng(12)
    shares = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.7])
    values = law(shares, 0.20, 1.5, -2.0) + rng.normal(0.0, 0.001, shares.size)
    fit = fit_two_domain(shares, values, "plant")
    assert fit.reliable, fit.problems
    assert (fit.c, fit.k, fit.b) == pytest.approx((0.20, 1.5, -2.0), abs=0.1)


def test_the_multi_domain_form_recovers_its_exponents():
    rng = np.random.default_rng(13)
    proportions = rng.dirichlet(np.ones(3), size=16)
    c, k, t = 1.2, 0.8, np.array([-1.5, 0.7, 0.0])  # t of the last source is the reference, 0
    values = c + k * np.exp(proportions @ t) + rng.normal(0.0, 0.001, 16)
    fit = fit_multi_domain(proportions, values, ["plant", "general", "code"], "plant")
    assert fit.reliable, fit.problems
    assert fit.c == pytest.approx(c, abs=0.1)
    assert fit.t == pytest.approx(tuple(t), abs=0.15)
    assert fit.predict(proportions) == pytest.approx(values, abs=0.005)
    assert fit.to_dict()["t"] == pytest.approx({"plant": fit.t[0], "general": fit.t[1], "code": 0.0})


def test_multi_domain_proportions_must_sum_to_one():
    with pytest.raises(ValueError, match=r"proportions row 1: .* sums to 0.9"):
        fit_multi_domain([[0.5, 0.5], [0.3, 0.6], [0.2, 0.8]], [1, 2, 3], ["a", "b"])


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([1.00, 0.80, 0.85, 0.60, 0.55, 0.52], "not monotone: the metric rises by 0.05 from share 0.1 to 0.2"),
        ([1.00, 0.99, 0.98, 0.60, 0.59, 0.58], "leave-one-out RMSE"),
    ],
)
def test_data_the_law_cannot_describe_are_flagged(values, problem):
    fit = fit_two_domain([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], values, "general")
    assert not fit.reliable
    assert any(problem in p for p in fit.problems), fit.problems


def test_too_few_points_are_flagged():
    fit = fit_two_domain([0.1, 0.3, 0.5], law([0.1, 0.3, 0.5], 0.3, -2.0, -1.0), "general")
    assert "3 points for 3 parameters: at least 4 are needed" in fit.problems


def test_a_floor_collapsing_to_zero_is_flagged():
    shares = np.linspace(0.0, 1.0, 7)
    fit = fit_two_domain(shares, np.exp(-1.2 * shares - 0.5), "general")  # a pure exponential: no floor
    assert any(p.startswith("c collapsed to 0") for p in fit.problems), fit.problems


def test_a_large_leave_one_out_error_is_flagged_by_threshold():
    rng = np.random.default_rng(14)
    shares = np.linspace(0.0, 1.0, 6)
    values = law(shares, 0.3, -2.0, -1.0) + rng.normal(0.0, 0.004, 6)
    strict = fit_two_domain(shares, values, options=FitOptions(max_loo_relative=1e-4, monotone_tolerance=1.0))
    assert any("leave-one-out RMSE" in p for p in strict.problems)
    assert len(strict.loo_errors) == 6 and all(np.isfinite(strict.loo_errors))


def test_unusable_input_is_an_error_not_a_fit():
    with pytest.raises(ValueError, match="two or more different mixtures"):
        fit_two_domain([0.2, 0.2], [1.0, 1.1], "plant")
    with pytest.raises(ValueError, match="values must be positive"):
        fit_two_domain([0.1, 0.2], [1.0, 0.0], "plant")


def test_the_dict_round_trips():
    shares = np.linspace(0.0, 0.8, 5)
    fit = fit_two_domain(shares, law(shares, 0.4, -1.7, -0.9), "general")
    again = LawFit.from_dict(fit.to_dict())
    assert again.predict(0.33) == pytest.approx(fit.predict(0.33))
    assert again.problems == fit.problems and again.loo_rmse == pytest.approx(fit.loo_rmse)
