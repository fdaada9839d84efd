"""`python -m worker.model.cpu_kernels`: build the CPU block kernels now (`make install` does), so that
no model worker pays the compile (~1-3 minutes on 2 cores) at its first quantized load."""

import sys

from worker.model.cpu_kernels import available

why_not = available()
print(why_not or "the CPU block kernels are built")
sys.exit(0)
