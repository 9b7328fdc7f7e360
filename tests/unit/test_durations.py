"""Durations as the CRDs write them."""

import pytest

from controller.durations import parse_duration


def test_units_and_sums() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("1h30m") == 5400 and parse_duration(None) is None


def test_bad_duration_names_the_text() -> None:
    with pytest.raises(ValueError, match="'5 minutes' is not a duration"):
        parse_duration("5 minutes")
