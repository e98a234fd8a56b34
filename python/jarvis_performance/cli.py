"""The ``jarvis-perf`` console script: a thin entry point into the Rust command line."""

from __future__ import annotations

import sys

from ._native import cli_main


def main() -> None:
    """Run ``jarvis-perf`` with this process's arguments and exit with its status."""
    sys.exit(cli_main(["jarvis-perf", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
