"""Input validation helpers and reading per-example labels from datasets."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from useful_data import find_slow_learnable
from useful_data._checks import SEED_MAX, check_seed, is_integer_valued
from useful_data._resolve import resolve_selection
from useful_data._targets import dataset_targets, split_batch


def test_largest_seed_is_accepted():
    """Seeds up to 2**32 - 1 (numpy's RandomState limit) are valid, end to end."""
    assert check_seed("seed", SEED_MAX) == SEED_MAX
    logits = np.array([[3.0, 0.0], [0.1, 0.0], [0.0, 3.0], [0.0, 0.1]], dtype=np.float32)
    sel = find_slow_learnable(logits=logits, targets=[0, 0, 1, 1], seed=SEED_MAX, backend="sklearn")
    assert sel.params["seed"] == SEED_MAX


def test_float_indices_are_rejected_not_truncated():
    """Indices 1.5 and 3.0 are not silently read as 1 and 3."""
    with pytest.raises(TypeError, match="should hold integers"):
        resolve_selection(np.array([1.5, 3.0]), num_examples=5)


def test_targets_must_be_one_dimensional_and_not_a_string():
    """A (N, 1) column of labels and a string are rejected up front."""
    logits = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="targets should have shape"):
        find_slow_learnable(logits=logits, targets=np.zeros((4, 1), int), backend="sklearn")
    with pytest.raises(TypeError, match="targets should be a numpy array"):
        find_slow_learnable(logits=logits, targets="0101", backend="sklearn")


def test_empty_array_of_any_dtype_is_integer_valued():
    """As documented: an empty array of any dtype qualifies."""
    assert is_integer_valued(np.array([], dtype=bool))


class _Plain(Dataset):
    """A dataset of n items with optional attributes."""

    def __init__(self, n, **attrs):
        self.n = n
        for k, v in attrs.items():
            setattr(self, k, v)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(1), 0


def test_dataset_targets_edge_cases():
    """Labels are read only when they are per-example integer labels of the right source."""
    x = torch.zeros(4, 2)
    y = torch.tensor([0, 1, 2, 1])
    # ConcatDataset with one part of unknown labels: unknown (not the known part alone)
    assert dataset_targets(ConcatDataset([TensorDataset(x, y), _Plain(3)])) is None
    # .targets not one per example (e.g. the class list) is not read
    assert dataset_targets(_Plain(4, targets=[0, 1])) is None
    # non-integer labels (soft or names) are not labels
    assert dataset_targets(_Plain(2, targets=np.array([0.5, 1.5]))) is None
    assert dataset_targets(_Plain(2, targets=np.array(["cat", "dog"]))) is None
    # TensorDataset(x, y, w): the labels are the second tensor
    assert dataset_targets(TensorDataset(x, y, torch.ones(4))).tolist() == [0, 1, 2, 1]
    # targets before labels
    assert dataset_targets(_Plain(2, targets=[1, 0], labels=[0, 1])).tolist() == [1, 0]
    # a timm reader: samples must be one per example and (path, label)
    reader = types.SimpleNamespace(samples=[("a", 0), ("b", 1)])
    assert dataset_targets(_Plain(3, reader=reader)) is None
    reader = types.SimpleNamespace(samples=[("a",), ("b",)])
    assert dataset_targets(_Plain(2, reader=reader)) is None


def test_split_batch_key_order_and_target_checks():
    """Dict keys are tried in the documented order; soft or 0-d targets are rejected."""
    a, b = torch.zeros(2, 1), torch.ones(2, 1)
    t, u = torch.tensor([0, 1]), torch.tensor([1, 0])
    inputs, targets = split_batch({"x": b, "image": a, "y": u, "label": t})
    assert inputs is a and torch.equal(targets, t)
    with pytest.raises(TypeError, match="integer class indices"):
        split_batch((a, torch.tensor([0.2, 1.0])))
    with pytest.raises(TypeError, match="integer class indices"):
        split_batch((a, torch.tensor(1)))
