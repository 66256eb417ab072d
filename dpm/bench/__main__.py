"""python -m dpm.bench: see dpm.bench.harness (what it measures) and dpm.bench.cli."""

import sys

from dpm.bench.cli import main

main(sys.argv[1:])
