"""The ONNX backend node-test suite (shipped inside the ``onnx`` wheel) run through ``Runtime``.

Each case is a folder with ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``. A case
passes when every output matches the expected one in dtype, shape and value (the suite's own
tolerances: rtol 1e-3, atol 1e-7). ``python tests/python/conformance.py --write`` re-records the
expected failures in ``conformance_expected_failures.txt`` (one ``case<TAB>reason`` per line).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import jarvis_performance as jp

NODE_TESTS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
EXPECTED_FAILURES = Path(__file__).with_name("conformance_expected_failures.txt")
RTOL, ATOL = 1e-3, 1e-7


class CaseFailure(Exception):
    """A case failed; the message is its one-line reason."""


def cases() -> list[str]:
    return sorted(p.name for p in NODE_TESTS.iterdir() if (p / "model.onnx").exists())


def _read_tensor(path: Path) -> np.ndarray:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    if not proto.dims and not proto.raw_data and proto.data_type == 0:
        raise CaseFailure("input is a sequence/optional value, not a tensor")
    try:
        return numpy_helper.to_array(proto)
    except ValueError as err:  # a sequence or optional value parsed as a tensor
        raise CaseFailure(f"input is not a plain tensor ({err})") from err


def _sorted_pbs(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))


def run_case(name: str) -> None:
    """Run one case; raise :class:`CaseFailure` with a one-line reason if it fails."""
    folder = NODE_TESTS / name
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    output_names = [o.name for o in model.graph.output]
    try:
        # Operator semantics with NaN/Inf inputs are part of the suite.
        rt = jp.Runtime.load(folder / "model.onnx", threads=1, allow_non_finite=True)
    except jp.UnsupportedOpError as err:
        raise CaseFailure(f"unsupported op: {_first_line(err)}") from err
    except jp.JarvisError as err:
        raise CaseFailure(f"load: {_first_line(err)}") from err
    for data in sorted(folder.glob("test_data_set_*")):
        inputs = [_read_tensor(p) for p in _sorted_pbs(data, "input")]
        expected = [_read_tensor(p) for p in _sorted_pbs(data, "output")]
        feed = dict(zip(input_names, inputs))
        try:
            got = rt.run(output_names, feed)
        except jp.JarvisError as err:
            raise CaseFailure(f"run: {_first_line(err)}") from err
        for out_name, want, have in zip(output_names, expected, got):
            _compare(out_name, want, have)


def _compare(name: str, want: np.ndarray, have: np.ndarray) -> None:
    if want.dtype != have.dtype:
        raise CaseFailure(f"output {name}: dtype {have.dtype}, expected {want.dtype}")
    if want.shape != have.shape:
        raise CaseFailure(f"output {name}: shape {have.shape}, expected {want.shape}")
    if want.dtype.kind in "fc":
        if not np.allclose(have, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            raise CaseFailure(f"output {name}: values differ beyond rtol {RTOL}")
    elif not np.array_equal(have, want):
        raise CaseFailure(f"output {name}: values differ")


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    # Keep reasons stable across runs and short enough to read in a table.
    text = re.sub(r"0x[0-9a-f]+", "0x…", text).replace(str(NODE_TESTS) + "/", "")
    return text[:200]


def load_expected_failures() -> dict[str, str]:
    """The checked-in list: case name -> reason."""
    failures = {}
    for line in EXPECTED_FAILURES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, reason = line.partition("\t")
            failures[name] = reason
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="re-record the expected failures")
    args = parser.parse_args()
    failures: dict[str, str] = {}
    all_cases = cases()
    for name in all_cases:
        try:
            run_case(name)
        except CaseFailure as err:
            failures[name] = str(err)
        except Exception as err:  # noqa: BLE001 - a harness error is a failure with its reason
            failures[name] = f"harness: {type(err).__name__}: {_first_line(err)}"
    passed = len(all_cases) - len(failures)
    sys.stdout.write(f"{passed}/{len(all_cases)} cases pass; {len(failures)} fail\n")
    kinds = Counter(reason.split(":")[0] for reason in failures.values())
    for kind, count in kinds.most_common():
        sys.stdout.write(f"  {count:5d}  {kind}\n")
    if args.write:
        header = (
            "# ONNX backend node tests (onnx==1.22.0) that jarvis-performance fails, with the reason.\n"
            "# Re-record with: python tests/python/conformance.py --write\n"
        )
        body = "".join(f"{n}\t{r}\n" for n, r in sorted(failures.items()))
        EXPECTED_FAILURES.write_text(header + body)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JARVIS_PERF_THREADS", "1")
    sys.exit(main())
