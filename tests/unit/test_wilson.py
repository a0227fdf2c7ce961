"""The Wilson score interval every reported rate carries (revlens._numbers.wilson)."""

import math

import pytest

from revlens._numbers import wilson


def test_wilson_matches_the_closed_form_and_textbook_values():
    # 5 / 10 at 95 %: the textbook interval (Agresti & Coull 1998, table 1 style) 0.2366 – 0.7634
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    # 81 / 100: asymmetric around the rate, inside [0, 1]
    lo, hi = wilson(81, 100)
    assert lo < 0.81 < hi and (0.81 - lo) > (hi - 0.81)


def test_wilson_edges_and_levels():
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 10)[1] > 0.2  # 0 / 10 is not "exactly zero"
    assert all(math.isnan(x) for x in wilson(0, 0))
    narrow, wide = wilson(30, 60, level=0.5), wilson(30, 60, level=0.99)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


@pytest.mark.parametrize("k,n,level", [(-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)])
def test_wilson_rejects_bad_input(k, n, level):
    with pytest.raises(ValueError):
        wilson(k, n, level=level)
