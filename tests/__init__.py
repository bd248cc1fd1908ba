"""The test suite (pytest; configuration in pyproject.toml, fixtures in conftest.py).

One thread per test process, and so per run, worker and job it starts (they inherit it): the
suite's models are tiny, so a second intra-op thread gains little, and with two test processes on
two cores (`make test`), or on a machine shared with anything, OpenMP threads spin waiting for one
another: on 2 busy cores, 5 tests of test_batchnorm took 757 s with torch's 2 threads, 122 s with 1.
Set here, in the package pytest imports before conftest.py and any test module, so before anything
imports torch (or numpy's BLAS); a value set by hand is kept.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
