"""Research tools beyond the paper, kept apart from the method: nothing else imports them.

`TrainingDynamics` records per-example learning statistics during phase 1 from the logits of
your own training loop (or logits you record yourself), `IndexedDataset` adds each item's
index so batches can be fed to it, and `select_from_dynamics` selects the slowest examples of
every class from the record. Measured (``benchmarks/bench_dynamics.py``,
docs/benchmarks_accuracy.md): no strategy here beat the paper's k-means on a snapshot
(`find_slow_learnable`), in recovering planted slow-learnable examples or in test accuracy;
use it to study learning speed, not to improve USEFUL.
"""

from __future__ import annotations

from useful_data.experimental.dynamics import (
    IndexedDataset,
    TrainingDynamics,
    select_from_dynamics,
)

__all__ = ["IndexedDataset", "TrainingDynamics", "select_from_dynamics"]
