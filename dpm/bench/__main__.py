"""python -m dpm.bench: see dpm.bench.harness."""

import sys

from dpm.bench.harness import main

main(sys.argv[1:])
