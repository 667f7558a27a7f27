"""`python -m nezha_kernels.bench ...`: the same as `nezha-kernels bench ...`."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
