"""BDC against dcor (an independent implementation of distance covariance) and the MBDC module's behaviour."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch

from dalip.bdc import MBDC, MbdcConfig, bdc_matrix


@pytest.mark.parametrize(("d", "m"), [(2, 3), (5, 7), (12, 4), (46, 197), (30, 77)])
def test_bdc_inner_product_is_dcor_distance_covariance(d: int, m: int) -> None:
    rng = np.random.default_rng(d * 1000 + m)
    x = rng.normal(size=(d, m))
    y = rng.normal(size=(d, m)) + 0.5 * x  # correlated, so the covariance is not near zero
    a = bdc_matrix(torch.from_numpy(x), eps=0.0, scale=False)
    b = bdc_matrix(torch.from_numpy(y), eps=0.0, scale=False)
    ours = float((a * b).sum()) / d**2
    ref = dcor.distance_covariance_sqr(x, y)  # rows are observations, V-statistic
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(("d", "mx", "my"), [(6, 9, 9), (10, 5, 20)])
def test_scaled_bdc_divides_by_2_sqrt_mx_my(d: int, mx: int, my: int) -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(d, mx)), rng.normal(size=(d, my))
    ref = dcor.distance_covariance_sqr(x, y)
    a = bdc_matrix(torch.from_numpy(x), eps=0.0, scale=True)
    b = bdc_matrix(torch.from_numpy(y), eps=0.0, scale=True)
    assert float((a * b).sum()) / d**2 == pytest.approx(ref / (2 * np.sqrt(mx * my)), rel=1e-6)


def test_batched_bdc_matches_per_matrix_and_triu_relation() -> None:
    x = torch.randn(3, 4, 8, 20, dtype=torch.float64)
    y = torch.randn(3, 4, 8, 20, dtype=torch.float64)
    a, b = bdc_matrix(x), bdc_matrix(y)
    assert a.shape == (3, 4, 8, 8)
    torch.testing.assert_close(a[2, 1], bdc_matrix(x[2, 1]))
    # Double centring: every row and column of A sums to zero.
    torch.testing.assert_close(a.sum(-1), torch.zeros(3, 4, 8, dtype=torch.float64), atol=1e-10, rtol=0)
    # <A, B> = 2 <triu(A), triu(B)> - <diag(A), diag(B)> (A and B are symmetric).
    r, c = torch.triu_indices(8, 8)
    full = (a * b).sum((-2, -1))
    triu = (a[..., r, c] * b[..., r, c]).sum(-1)
    diag = (a.diagonal(dim1=-2, dim2=-1) * b.diagonal(dim1=-2, dim2=-1)).sum(-1)
    torch.testing.assert_close(full, 2 * triu - diag)


def test_mbdc_gradients_reach_every_parameter_and_batch_of_one_works() -> None:
    torch.manual_seed(0)
    mbdc = MBDC(width=32, out_dim=16, config=MbdcConfig(heads=4, dim=6, dropout=0.5))
    for batch in (5, 1):
        mbdc.zero_grad()
        tokens, pooled = torch.randn(batch, 11, 32), torch.randn(batch, 32)
        z = mbdc(tokens, pooled)
        assert z.shape == (batch, 16)
        z.square().sum().backward()
        for name, p in mbdc.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_mbdc_sizes_follow_the_config() -> None:
    cfg = MbdcConfig(heads=2, dim=5, hidden_dim=7)
    mbdc = MBDC(width=8, out_dim=3, config=cfg)
    assert cfg.bdc_width == 2 * 15
    assert mbdc.reduce[0].in_features == 4 and mbdc.fc.in_features == 30 and mbdc.fc.out_features == 7
    assert MBDC(width=8, out_dim=3, config=MbdcConfig(dim=5)).fc.out_features == MbdcConfig(dim=5).bdc_width
    with pytest.raises(ValueError, match="not divisible"):
        MBDC(width=10, out_dim=3, config=MbdcConfig(heads=4))


def test_token_reweighting_changes_the_embedding_and_can_be_turned_off() -> None:
    tokens, pooled = torch.randn(2, 9, 16), torch.randn(2, 16)
    torch.manual_seed(1)
    on = MBDC(16, 8, MbdcConfig(heads=2, dim=4, dropout=0.0, reweight=True)).eval()
    off = MBDC(16, 8, MbdcConfig(heads=2, dim=4, dropout=0.0, reweight=False)).eval()
    off.load_state_dict(on.state_dict())
    assert not torch.allclose(on(tokens, pooled), off(tokens, pooled))
    # Without re-weighting the pooled token plays no part.
    torch.testing.assert_close(off(tokens, pooled), off(tokens, torch.randn(2, 16)))
