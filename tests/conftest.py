from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least noisy
    yield


def two_blob_logits(
    n_per_class: int = 60, num_classes: int = 3, slow_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits with a known answer: per class, a confident blob and a low-margin blob.

    Returns ``(logits, targets, truth)`` where ``truth`` marks the low-margin (high-loss) blob.
    """
    rng = np.random.default_rng(seed)
    n = n_per_class * num_classes
    targets = np.repeat(np.arange(num_classes), n_per_class)
    truth = np.zeros(n, dtype=bool)
    logits = rng.normal(0.0, 0.3, size=(n, num_classes)).astype(np.float32)
    for c in range(num_classes):
        idx = np.flatnonzero(targets == c)
        slow = idx[: round(slow_fraction * len(idx))]
        truth[slow] = True
        logits[idx, c] += 6.0  # learned: large margin, low loss
        logits[slow, c] -= 6.0  # not learned yet: near-uniform, high loss
    perm = rng.permutation(n)
    return logits[perm], targets[perm], truth[perm]
