"""The ONNX wheel's pytorch-converted and pytorch-operator test models (117, each with inputs and
expected outputs): compiled for x86 and compared with the shipped outputs.

The issue asks for >= 95 % passing with each failure listed and explained in the README;
``KNOWN_FAILURES`` is that list (empty today: every model passes), and each entry would be an
``xfail(strict=True)`` so a fixed model makes the list shrink instead of hiding.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvmforge.bench import onnx_tests

CASES = onnx_tests.cases()
KNOWN_FAILURES: dict[str, str] = {}
RTOL, ATOL = 1e-3, 1e-5  # the ONNX backend test suite's own rtol; atol for near-zero values


def test_the_suites_hold_117_models():
    assert len(CASES) == 117


def test_pass_rate_is_at_least_95_percent():
    assert len(KNOWN_FAILURES) <= 0.05 * len(CASES)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[c.id]))
        if c.id in KNOWN_FAILURES
        else c
        for c in CASES
    ],
    ids=lambda c: c.id,
)
def test_model_matches_shipped_outputs(case):
    ours, expected = onnx_tests.run_case(case)
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
