"""Bootstrap intervals against cases whose answer is known."""

import math

import pytest

from safeft.eval.stats import bootstrap_ci


def test_binomial_interval_matches_the_normal_approximation():
    # 200 of 400 prompts harmful: the 95% interval of a proportion is p +- 1.96 sqrt(p(1-p)/n) = 0.5 +- 0.049
    mean, lo, hi = bootstrap_ci([1.0] * 200 + [0.0] * 200, n_boot=4000)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert mean == 0.5
    assert lo == pytest.approx(0.5 - half, abs=0.008) and hi == pytest.approx(0.5 + half, abs=0.008)


def test_constant_data_has_a_zero_width_interval():
    assert bootstrap_ci([0.0] * 50) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([[1.0] * 30, [1.0] * 30]) == (1.0, 1.0, 1.0)


def test_seed_variation_widens_the_interval():
    # two seeds that disagree completely: resampling seeds gives means 0, 0.5 or 1
    mean, lo, hi = bootstrap_ci([[1.0] * 40, [0.0] * 40], n_boot=2000)
    assert mean == 0.5 and lo == 0.0 and hi == 1.0
    # identical seeds: the same interval as one seed's prompts alone (same bootstrap draws of prompts)
    row = [1.0] * 10 + [0.0] * 30
    one = bootstrap_ci([row], seed=3)
    two = bootstrap_ci([row, row], seed=3)
    assert one[0] == two[0] and abs(one[1] - two[1]) < 0.03 and abs(one[2] - two[2]) < 0.03


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="seeds x prompts"):
        bootstrap_ci([])


@pytest.mark.parametrize("k,n,lo,hi", [
    # Wilson 95% intervals (Newcombe 1998, table I and R's prop.test(correct=FALSE)): 0/10, 1/10, 5/10, 10/10, 81/263
    (0, 10, 0.0, 0.2775), (1, 10, 0.0179, 0.4042), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
])
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    from safeft.eval.stats import wilson_ci

    got = wilson_ci(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert (got[0] == 0.0) == (k == 0) and (got[1] == 1.0) == (k == n)  # exact at the ends
    with pytest.raises(ValueError):
        wilson_ci(3, 2)
