"""How hierpipe's compiled CPU kernels (numba) split their work among numba's threads."""

import numba
import numpy as np


def thread_runs(count: int) -> np.ndarray:
    """Boundaries (threads + 1,) of one contiguous run of `count` items per thread: the
    kernels' `prange` takes one run each, so that each thread owns its items' outputs."""
    return np.linspace(0, count, numba.get_num_threads() + 1).astype(np.int64)
