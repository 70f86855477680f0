from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


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


def make_image_folder(
    root, num_classes: int = 3, per_class: int = 10, size: int = 32, seed: int = 0
):
    """An ImageFolder layout (``root/train/class_c/i.png``) of noisy single-colour PNGs."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        colour = np.zeros(3)
        colour[c % 3] = 200.0
        for i in range(per_class):
            pixels = np.clip(rng.normal(0.0, 40.0, (size, size, 3)) + colour, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root
