"""The ONNX backend node-test suite through ``Runtime`` (see ``conformance.py``).

Every case runs. The cases listed in ``conformance_expected_failures.txt`` (each with its reason)
are strict xfails: a new failure fails the suite, and so does a listed case that starts passing,
so the list stays exact.
"""

from __future__ import annotations

import pytest
from conformance import CaseFailure, cases, load_expected_failures, run_case

EXPECTED = load_expected_failures()


def _params() -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(reason=EXPECTED[name], raises=CaseFailure))
        if name in EXPECTED
        else name
        for name in cases()
    ]


def test_suite_is_present() -> None:
    assert len(cases()) > 1500
    unknown = set(EXPECTED) - set(cases())
    assert not unknown, f"expected failures for cases that do not exist: {sorted(unknown)[:5]}"


@pytest.mark.parametrize("case", _params())
def test_node_case(case: str) -> None:
    try:
        run_case(case)
    except CaseFailure as failure:
        if case in EXPECTED:
            raise
        pytest.fail(f"{case}: {failure}")
