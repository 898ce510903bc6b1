"""The two test tiers' split of parametrized cases: the fast tier (``pytest -m "not
slow"``, the edit loop) runs a few representative values of a parameter, the full
suite runs them all.

    @pytest.mark.parametrize("name", tiered(cells.available(), FAST_CELLS))
"""

import pytest

# the three foundation cells and a linear recurrence (the parallel path)
FAST_CELLS = ("lstm", "gru", "elman", "mingru")


def tiered(values, fast) -> list:
    """``values`` as pytest params, those not in ``fast`` marked slow (full suite only)."""
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]
