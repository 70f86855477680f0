from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import two_blob_logits
from torch.utils.data import DataLoader, TensorDataset

from useful_data import USEFULDataset, find_slow_learnable


class Labelled(torch.utils.data.Dataset):
    """A torchvision-like dataset: .targets list, .classes, settable .transform."""

    def __init__(self, n: int = 10):
        self.data = torch.arange(float(n))
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["a", "b", "c"]
        self.transform = None

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x = self.data[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


def test_length_order_and_items():
    ds = USEFULDataset(Labelled(6), [1, 4], upsample_factor=3)
    assert len(ds) == 6 + 2 * 2
    assert ds.index_map.tolist() == [0, 1, 2, 3, 4, 5, 1, 4, 1, 4]
    assert [float(ds[i][0]) for i in range(len(ds))] == ds.index_map.tolist()
    assert float(ds[-1][0]) == 4.0


def test_every_example_once_and_slow_ones_k_times():
    logits, targets, _ = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    ds = USEFULDataset(TensorDataset(torch.arange(len(targets))), sel)
    counts = np.bincount(ds.index_map, minlength=len(targets))
    np.testing.assert_array_equal(counts, np.where(sel.mask, 2, 1))
    assert len(ds) == sel.upsampled_size


@pytest.mark.parametrize("selection", [[2, 0], np.array([True, False, True, False, False])])
def test_accepts_indices_and_masks(selection):
    ds = USEFULDataset(Labelled(5), selection)
    assert sorted(ds.index_map[5:].tolist()) == [0, 2]


def test_accepts_tensor_indices_and_path(tmp_path):
    logits, targets, _ = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    base = TensorDataset(torch.arange(len(targets)), torch.from_numpy(targets))
    from_path = USEFULDataset(base, sel.save(tmp_path / "s.npz"))
    from_tensor = USEFULDataset(base, torch.from_numpy(sel.indices))
    np.testing.assert_array_equal(from_path.index_map, from_tensor.index_map)


def test_upsample_factor_defaults_to_selection_hint():
    logits, targets, _ = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn", upsample_factor=3)
    ds = USEFULDataset(TensorDataset(torch.zeros(len(targets))), sel)
    assert ds.upsample_factor == 3 and len(ds) == len(targets) + 2 * sel.num_slow_learnable
    assert len(USEFULDataset(Labelled(4), [0])) == 5
    assert len(USEFULDataset(Labelled(4), [0], upsample_factor=1)) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"selection": [0], "upsample_factor": 0}, ValueError, "upsample_factor=0"),
        ({"selection": [0], "upsample_factor": 2.0}, TypeError, "upsample_factor"),
        ({"selection": [0], "upsample_factor": True}, TypeError, "upsample_factor"),
        ({"selection": [9]}, ValueError, "index 9"),
        ({"selection": [1, 1]}, ValueError, "repeat"),
        ({"selection": np.ones(3, dtype=bool)}, ValueError, "shape"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        USEFULDataset(Labelled(5), **kwargs)


def test_index_errors():
    ds = USEFULDataset(Labelled(3), [0])
    with pytest.raises(IndexError, match="out of range"):
        ds[4]
    with pytest.raises(IndexError):
        ds[-5]
    with pytest.raises(TypeError, match="integer"):
        ds[[0, 1]]


def test_fingerprint_mismatch_is_a_clear_error():
    logits, targets, _ = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    other = TensorDataset(torch.zeros(len(targets)))
    other.targets = np.roll(targets, 1)  # same size, another order/split
    with pytest.raises(ValueError, match="fingerprint"):
        USEFULDataset(other, sel)
    with pytest.raises(ValueError, match="another dataset"):
        USEFULDataset(TensorDataset(torch.zeros(len(targets) + 1)), sel)


def test_transform_assignment_reaches_wrapped_dataset_and_attributes_delegate():
    base = Labelled(4)
    ds = USEFULDataset(base, [3])
    ds.transform = lambda x: x * 10
    assert base.transform is ds.transform
    assert float(ds[4][0]) == 30.0
    assert ds.classes == ["a", "b", "c"]
    with pytest.raises(AttributeError):
        ds.no_such_attribute  # noqa: B018
    with pytest.raises(AttributeError, match="read-only"):
        ds.index_map = np.arange(3)


def test_targets_reflect_upsampled_view():
    ds = USEFULDataset(Labelled(5), [1, 2])
    assert ds.targets == [0, 1, 2, 0, 1, 1, 2]
    tensor_ds = TensorDataset(torch.zeros(3))
    tensor_ds.targets = torch.tensor([2, 0, 1])
    assert USEFULDataset(tensor_ds, [2]).targets.tolist() == [2, 0, 1, 1]
    assert USEFULDataset(TensorDataset(torch.zeros(2)), [0]).targets is None


def test_picklable_and_works_with_spawn_workers():
    ds = USEFULDataset(Labelled(8), [0, 7])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.index_map.tolist() == ds.index_map.tolist()
    assert clone.classes == ds.classes
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="spawn")
    seen = torch.cat([x for x, _ in loader]).tolist()
    assert seen == [float(i) for i in ds.index_map.tolist()]


def test_repr():
    assert "num_slow_learnable=1" in repr(USEFULDataset(Labelled(3), [1]))


def test_batched_getitems_equals_per_item_and_uses_the_inner_batch_path():
    base = Labelled(10)
    ds = USEFULDataset(base, [1, 4], upsample_factor=3)
    order = [13, 0, 10, -1, 4, 11]
    assert ds.__getitems__(order) == [ds[i] for i in order]
    assert ds.__getitems__([13]) == [ds[13]] and ds.__getitems__([]) == []  # 1 and 0 items
    batches = list(DataLoader(ds, batch_size=4, shuffle=False))
    assert torch.equal(
        torch.cat([b[0] for b in batches]), torch.tensor([float(ds[i][0]) for i in range(len(ds))])
    )

    class Batched(Labelled):
        def __getitems__(self, indices):
            assert isinstance(indices, list)  # what a DataLoader passes
            self.calls.append(indices)
            return [self[i] for i in indices]

    inner = Batched(10)
    inner.calls = []
    wrapped = USEFULDataset(inner, [1, 4])
    wrapped.__getitems__([10, 11, 0])
    assert inner.calls == [[1, 4, 0]]  # one batched call with the mapped positions
    with pytest.raises(IndexError, match="index 12 is out of range for USEFULDataset of length 12"):
        wrapped.__getitems__([0, 12])
    with pytest.raises(IndexError, match="index 12 is out of range"):
        wrapped.__getitems__([12])
    with pytest.raises(TypeError, match="index should be an integer"):
        wrapped.__getitems__([0, 1.5])


class FolderLike(torch.utils.data.Dataset):
    """An ImageFolder/SVHN-like dataset: per-example .samples, .imgs and .labels lists."""

    def __init__(self, n: int = 6):
        self.samples = [(f"img{i}.png", i % 2) for i in range(n)]
        self.imgs = self.samples
        self.labels = np.array([i % 2 for i in range(n)])
        self.root = "folder"
        self.transform = "AUG"

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def test_per_example_attributes_follow_the_upsampled_view():
    ds = USEFULDataset(FolderLike(6), [1, 4])
    assert len(ds) == 8
    assert ds.samples == [ds[i] for i in range(8)] and ds.imgs == ds.samples
    assert ds.labels.tolist() == [s[1] for s in ds.samples] == ds.targets.tolist()
    assert ds.root == "folder"  # other attributes as they are
    # e.g. class-balanced weights see the copies: every index of the upsampled view is drawn
    weights = 1.0 / np.bincount(ds.labels)[ds.labels]
    assert len(weights) == len(ds)


def test_copy_copies_the_wrapped_dataset_so_a_copy_gets_its_own_transform():
    import copy

    train = USEFULDataset(FolderLike(6), [1, 4])
    view = copy.copy(train)
    view.transform = "EVAL"
    assert train.transform == "AUG" and view.transform == "EVAL"
    assert view.index_map is train.index_map and len(view) == len(train)


def test_remapped_lists_are_views_that_follow_the_wrapped_list():
    ds = USEFULDataset(FolderLike(6), [1, 4])
    first = ds.samples
    assert ds.samples is first  # a loop over ds.samples[i] does not rebuild it every time
    ds.dataset.samples = [(f"new{i}.png", 0) for i in range(6)]  # replaced: followed
    assert ds.samples[6] == ("new1.png", 0) and first[6] == ("new1.png", 0)
    assert ds.samples[6:] == [("new1.png", 0), ("new4.png", 0)] and ds.samples[-1] == ds[7]
    with pytest.raises(TypeError):
        ds.samples[0] = ("x.png", 1)  # read-only
    import pickle

    assert "_views" not in pickle.loads(pickle.dumps(ds)).__dict__  # not shipped


def test_targets_follow_the_wrapped_labels_edited_in_place():
    """Issue 16.7: .targets (and every remapped list) agrees with the items after an in-place
    edit of the wrapped dataset's list, not a copy read once."""
    base = Labelled(5)
    ds = USEFULDataset(base, [1, 2])
    assert ds.targets == [0, 1, 2, 0, 1, 1, 2]
    base.targets[1] = 2  # e.g. relabelling noisy examples
    assert ds.targets == [ds[i][1] for i in range(len(ds))] == [0, 2, 2, 0, 1, 2, 2]
    assert np.bincount(ds.targets).tolist() == [2, 1, 4]  # np.asarray reads it current too
    folder = USEFULDataset(FolderLike(4), [3])
    folder.dataset.samples[3] = ("fixed.png", 0)
    assert folder.samples == [folder[i] for i in range(5)] and folder.imgs[4] == ("fixed.png", 0)


def test_a_labels_attribute_that_is_not_per_example_is_passed_through():
    """`.labels` holding class names (not one entry per example) is not remapped."""

    class Named(TensorDataset):
        labels = ("cat", "dog")

    base = Named(torch.arange(5.0), torch.tensor([0, 0, 1, 1, 1]))
    ds = USEFULDataset(base, np.array([True, False, False, False, True]))
    assert ds.labels == ("cat", "dog")


class _Growing(torch.utils.data.Dataset):
    """A dataset whose examples a user appends to, or removes, after wrapping it."""

    def __init__(self, n: int):
        self.items = list(range(n))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize(("change", "effect"), [(+3, "never be trained on"), (-3, "past its end")])
def test_a_dataset_that_changes_length_after_wrapping_is_refused(change, effect):
    base = _Growing(10)
    ds = USEFULDataset(base, [0, 5])
    assert len(ds) == 12
    if change > 0:
        base.items.extend(range(10, 10 + change))
    else:
        del base.items[change:]
    message = f"had 10 examples when USEFULDataset wrapped it but has {10 + change} now.*{effect}"
    with pytest.raises(RuntimeError, match=message):
        len(ds)
    with pytest.raises(RuntimeError, match=message):
        ds[0]
    with pytest.raises(RuntimeError, match=message):
        ds.__getitems__([0, 1])
    with pytest.raises(RuntimeError, match=message):  # at the start of an epoch
        next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    with pytest.raises(RuntimeError, match=message):
        list(DataLoader(ds, batch_size=4))
