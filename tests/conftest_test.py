"""Tests of the test set-up itself (tests/conftest.py): what counts as CI."""

import pytest

import conftest


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "on"])
def test_any_true_ci_value_counts_as_ci(value):
  assert conftest.is_ci(value)


@pytest.mark.parametrize("value", [None, "", "0", "false", "False", "no",
                                   "off"])
def test_unset_empty_and_false_ci_values_do_not(value):
  assert not conftest.is_ci(value)
