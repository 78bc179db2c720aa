"""Unbiased pass@k against the closed form 1 - C(n-c, k) / C(n, k)."""

from math import comb

import pytest

from megatron_lite.evaluation.pass_at_k import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 7, 5), (20, 1, 10),
                                   (200, 13, 1), (200, 13, 10), (200, 13, 100), (200, 0, 100), (200, 200, 100)])
def test_pass_at_k_equals_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12, abs=1e-15)


def test_pass_at_1_is_the_fraction_passed():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8, rel=1e-15)


def test_mean_over_tasks_reports_only_k_up_to_the_smallest_n():
    result = mean_pass_at_k([(10, 0), (10, 10), (5, 1)], [1, 5, 10])
    assert set(result) == {"pass@1", "pass@5"}
    assert result["pass@1"] == pytest.approx((0 + 1 + 0.2) / 3)
    assert result["pass@5"] == pytest.approx((0 + 1 + 1) / 3)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 1, 0), (5, 1, 6)])
def test_bad_counts_are_rejected(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
