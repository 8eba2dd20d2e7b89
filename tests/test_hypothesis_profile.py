"""The suite's Hypothesis profile (tests/conftest.py): steady on a busy machine, loud on failure."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_the_steady_profile_is_loaded_by_default() -> None:
    current = settings.default
    assert current.deadline is None
    assert HealthCheck.too_slow in current.suppress_health_check
    assert current.database is None
    assert current.max_examples == 100


def test_slow_input_generation_does_not_fail_the_test() -> None:
    # A machine that pauses the test process (CI beside other work) looks to Hypothesis like
    # slow input generation; under its defaults this one fails with FailedHealthCheck
    # ("only generated 4 valid inputs after 1.00 seconds").
    @settings(max_examples=10)
    @given(st.integers().map(lambda n: (time.sleep(0.25), n)[1]))
    def property_on_a_paused_machine(n: int) -> None:
        assert isinstance(n, int)

    property_on_a_paused_machine()


def test_a_failure_reports_its_example_and_how_to_replay_it() -> None:
    @given(st.integers(min_value=0))
    def below_ten(n: int) -> None:
        assert n < 10

    with pytest.raises(AssertionError) as failure:
        below_ten()
    # Hypothesis attaches these as notes of the exception: pytest prints them under the traceback.
    notes = "\n".join(getattr(failure.value, "__notes__", []))
    assert "n=10" in notes
    assert "@reproduce_failure" in notes
