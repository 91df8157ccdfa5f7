"""Seeds derived from tuples of ints: every random draw of a run (data order, per-sample augmentation,
masks, generated data) is seeded from (run seed, ...) so that resume, the number of ranks and the number of
workers do not change what a run sees."""
from __future__ import annotations

import numpy as np


def derive_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of ints (stable across processes and Python versions)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)
