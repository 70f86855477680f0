from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import two_blob_logits
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from useful_data import Selection, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def test_higher_loss_cluster_is_selected():
    logits, targets, truth = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)
    # a flipped cluster choice would select exactly the complement
    assert not np.array_equal(sel.mask, ~truth)
    for c in sel.class_summary():
        assert c.mean_loss_slow > c.mean_loss_fast
        assert c.split


def test_cluster_choice_is_by_loss_not_by_size_or_label():
    # The high-loss cluster is the LARGER one here (70%), so "smaller cluster" heuristics fail.
    logits, targets, truth = two_blob_logits(slow_fraction=0.7, seed=3)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)


def test_numpy_and_torch_inputs_agree_and_indices_are_sorted_int64():
    logits, targets, _ = two_blob_logits(seed=1)
    a = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    b = find_slow_learnable(
        logits=torch.from_numpy(logits), targets=torch.from_numpy(targets), backend="sklearn"
    )
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.indices.dtype == np.int64
    assert np.all(np.diff(a.indices) > 0)
    np.testing.assert_array_equal(a.indices, np.flatnonzero(a.mask))


def test_loss_is_per_example_cross_entropy():
    logits, targets, _ = two_blob_logits(seed=2)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(len(targets)), targets]
    np.testing.assert_allclose(sel.loss, expected, rtol=1e-5, atol=1e-5)


def test_non_contiguous_labels_are_fine():
    logits, targets, truth = two_blob_logits(num_classes=3)
    wide = np.zeros((len(targets), 8), dtype=np.float32) - 5.0
    mapping = np.array([1, 4, 7])
    wide[:, mapping] = logits
    sel = find_slow_learnable(logits=wide, targets=mapping[targets], backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)
    assert [c.label for c in sel.class_summary()] == [1, 4, 7]


@pytest.mark.filterwarnings("ignore:.*separat.*:RuntimeWarning")  # random logits: weak split
def test_deterministic_given_seed():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)).astype(np.float32)  # no clear structure: seed matters
    targets = rng.integers(0, 4, 300)
    a = find_slow_learnable(logits=logits, targets=targets, seed=5, backend="sklearn")
    b = find_slow_learnable(logits=logits, targets=targets, seed=5, backend="sklearn")
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.params["seed"] == 5 and a.params["n_init"] == 10


def test_probs_features():
    logits, targets, truth = two_blob_logits(seed=4)
    sel = find_slow_learnable(logits=logits, targets=targets, features="probs", backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)
    assert sel.params["features"] == "probs"


def test_single_example_class_is_reported_not_split():
    logits, targets, _ = two_blob_logits(num_classes=2)
    logits = np.vstack([logits, np.array([[0.0, 0.0, 3.0]], dtype=np.float32)[:, :2]])
    logits = np.hstack([logits, np.zeros((len(logits), 1), dtype=np.float32)])
    targets = np.append(targets, 2)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    summary = {c.label: c for c in sel.class_summary()}
    assert summary[2].num_examples == 1 and not summary[2].split
    assert summary[2].note == "single example"
    assert not sel.mask[-1]


def test_identical_outputs_warn_and_are_not_split():
    logits = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (10, 1))
    targets = np.zeros(10, dtype=np.int64)
    with pytest.warns(RuntimeWarning, match="identical"):
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert sel.num_slow_learnable == 0
    assert sel.class_summary()[0].note == "identical outputs"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logits": np.zeros((4, 2)), "targets": np.zeros(3, dtype=int)}, ValueError, r"\(4,\)"),
        ({"logits": np.zeros(4), "targets": np.zeros(4, dtype=int)}, ValueError, "shape"),
        ({"logits": np.zeros((4, 1)), "targets": np.zeros(4, dtype=int)}, ValueError, "2 col"),
        ({"logits": np.zeros((4, 2)), "targets": np.array([0, 1, 2, 0])}, ValueError, "label 2"),
        ({"logits": np.zeros((4, 2)), "targets": np.array([0, 1, -1, 0])}, ValueError, "label -1"),
        ({"logits": np.zeros((4, 2)), "targets": np.array([0.5, 1, 0, 0])}, ValueError, "integer"),
        ({"logits": np.zeros((4, 2))}, TypeError, "targets="),
        ({}, TypeError, "exactly one source"),
        ({"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "n_init": 0}, ValueError, "n_init"),
        (
            {"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "n_init": 10**9},
            ValueError,
            r"n_init should be an integer in \[1, 1000\]",
        ),
        (
            {"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "backend": "gpu"},
            ValueError,
            "backend",
        ),
        (
            {"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "features": "x"},
            ValueError,
            "features",
        ),
        (
            {"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "upsample_factor": 0},
            ValueError,
            "upsample_factor",
        ),
        (
            {"logits": np.zeros((4, 2)), "targets": [0, 1, 0, 1], "upsample_factor": 1.5},
            TypeError,
            "upsample_factor",
        ),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        find_slow_learnable(**kwargs)


def test_non_finite_logits_say_how_many_and_where():
    logits, targets, _ = two_blob_logits()
    logits[7, 0] = np.nan
    logits[9, 1] = np.inf
    logits[9, 2] = np.nan
    with pytest.raises(ValueError, match=r"2 of 180 rows .*\(first at index 7\)"):
        find_slow_learnable(logits=logits, targets=targets)


def test_model_and_logits_together_is_an_error():
    with pytest.raises(TypeError, match="exactly one"):
        find_slow_learnable(torch.nn.Linear(2, 2), logits=np.zeros((2, 2)), targets=[0, 1])


def _blob_dataset(seed: int = 0):
    logits, targets, truth = two_blob_logits(seed=seed)
    # identity "model" over logits-as-inputs makes the expected answer exact
    return TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets)), truth


def test_model_mode_matches_logits_mode_and_restores_train_mode():
    data, truth = _blob_dataset()
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Dropout(0.0))
    model.train()
    model[0].eval()  # mixed modes must be restored exactly
    sel = find_slow_learnable(model, data, batch_size=32, progress=False, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)
    assert model.training and not model[0].training and model[1].training


class _TargetsDataset(torch.utils.data.Dataset):
    """Items are dicts; labels also exposed as .targets (and counted when items are read)."""

    def __init__(self, x, y):
        self.x, self.targets, self.reads = x, y.tolist(), 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.x[i], "label": self.targets[i]}


def test_dict_items_and_targets_attribute():
    logits, targets, truth = two_blob_logits()
    data = _TargetsDataset(torch.from_numpy(logits), targets)
    sel = find_slow_learnable(torch.nn.Identity(), data, progress=False, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)
    assert data.reads == len(data)  # each item loaded once


def test_targets_read_through_subset_and_concat():
    logits, targets, truth = two_blob_logits()
    base = _TargetsDataset(torch.from_numpy(logits), targets)
    view = ConcatDataset([Subset(base, range(0, 100)), Subset(base, range(100, 180))])
    sel = find_slow_learnable(logits=logits, dataset=view, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, truth)


def test_eval_dataset_must_match_length_and_labels():
    data, _ = _blob_dataset()
    x, y = data.tensors
    with pytest.raises(ValueError, match="same examples"):
        find_slow_learnable(
            torch.nn.Identity(), data, eval_dataset=TensorDataset(x[:-1], y[:-1]), progress=False
        )
    shuffled = y.clone()
    shuffled[[0, 1]] = shuffled[[1, 0]] if shuffled[0] != shuffled[1] else shuffled[[0, 2]]
    wrong = _TargetsDataset(x, shuffled.numpy())
    with pytest.raises(ValueError, match="labels"):
        find_slow_learnable(
            torch.nn.Identity(), _TargetsDataset(x, y.numpy()), eval_dataset=wrong, progress=False
        )


def test_eval_dataset_is_used_for_outputs():
    data, truth = _blob_dataset()
    x, y = data.tensors
    noisy_train_view = TensorDataset(torch.randn_like(x), y)  # "augmented": useless outputs
    sel = find_slow_learnable(
        torch.nn.Identity(),
        noisy_train_view,
        eval_dataset=data,
        progress=False,
        backend="sklearn",
    )
    np.testing.assert_array_equal(sel.mask, truth)


def test_item_without_target_is_a_clear_error():
    data = TensorDataset(torch.randn(6, 2))
    with pytest.raises(ValueError, match="labels"):
        find_slow_learnable(torch.nn.Identity(), data, progress=False)


def test_selection_on_the_papers_synthetic_distribution():
    """Definition 3.1 data: after early GD, the selection is the examples without v_e."""
    data = make_simplicity_bias_data(2000, seed=0)
    model = ToyCNN(init_std=0.01, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(250):  # calibrated: v_e is learned, v_d is not (see docs/how-it-works)
        loss = torch.nn.functional.cross_entropy(model(data.inputs), data.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.feature_alignment(data.v_e) > 2 * model.feature_alignment(data.v_d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = find_slow_learnable(model, data, batch_size=500, progress=False, backend="sklearn")
    truth = ~data.has_fast_feature.numpy()
    tp = int((sel.mask & truth).sum())
    precision, recall = tp / sel.num_slow_learnable, tp / int(truth.sum())
    print(f"synthetic selection: precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.9 and recall >= 0.95
    assert isinstance(sel, Selection)


def test_item_labels_must_match_targets_attribute_unless_targets_given():
    logits, targets, truth = two_blob_logits()
    data = _TargetsDataset(torch.from_numpy(logits), targets)
    data.targets = list((targets + 1) % 3)  # e.g. a target_transform remaps the item labels
    items = TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets))
    items.targets = data.targets
    with pytest.raises(ValueError, match="target_transform"):
        find_slow_learnable(torch.nn.Identity(), items, progress=False)
    sel = find_slow_learnable(
        torch.nn.Identity(), items, targets=targets, progress=False, backend="sklearn"
    )
    np.testing.assert_array_equal(sel.mask, truth)


class _CountingIdentity(torch.nn.Module):
    """The identity, counting its forward calls (to see that bad arguments fail first)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, r"seed should be an integer >= 0"),
        ({"seed": 2**32}, ValueError, r"seed should be an integer in \[0, 4294967295\]"),
        ({"seed": 1.5}, TypeError, "seed should be an integer"),
        ({"seed": True}, TypeError, "seed should be an integer"),
        ({"seed": None}, TypeError, "seed should be an integer"),
        ({"backend": "gpu"}, ValueError, "backend should be one of"),
        ({"backend": "cuml"}, ImportError, "cuML"),
        # arguments of a stream are refused for data addressed by position, not ignored
        ({"max_examples": 0}, ValueError, "max_examples should be an integer >= 1"),
        ({"max_examples": 10}, ValueError, r"max_examples= applies to a stream .* only"),
        ({"key": "id"}, ValueError, r"key= applies to a stream .* but got key='id'"),
        ({"key": len}, ValueError, r"key= applies to a stream"),
    ],
)
def test_bad_arguments_fail_before_the_forward_pass(kwargs, error, match):
    logits, targets, _ = two_blob_logits()
    model = _CountingIdentity()
    data = TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets))
    with pytest.raises(error, match=match):
        find_slow_learnable(model, data, progress=False, **kwargs)
    assert model.calls == 0
    with pytest.raises(error, match=match):  # and on the logits= path
        find_slow_learnable(logits=logits, targets=targets, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 8},
        {"num_workers": 2},
        {"autocast_dtype": torch.bfloat16},
        {"channels_last": True},
        {"eval_dataset": TensorDataset(torch.zeros(4, 2))},
    ],
)
def test_forward_pass_settings_with_logits_are_refused_not_ignored(kwargs):
    """Issue #25 (ignored arguments): logits= are used as given, so a setting of the forward
    pass alongside them would be silently ignored; it is refused, naming it."""
    logits, targets, _ = two_blob_logits()
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name}= applies to the model's forward pass only"):
        find_slow_learnable(logits=logits, targets=targets, backend="sklearn", **kwargs)
    find_slow_learnable(logits=logits, targets=targets, backend="sklearn", num_workers=0)


def test_eval_view_in_another_order_fails_for_a_tensor_dataset():
    """A TensorDataset's labels are its second tensor: the eval view is checked against them."""
    logits, targets, _ = two_blob_logits()
    x, y = torch.from_numpy(logits), torch.from_numpy(targets)
    train = TensorDataset(x, y)
    shuffled = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"eval_dataset\.targets should equal"):
        find_slow_learnable(
            torch.nn.Identity(), train, eval_dataset=TensorDataset(x[shuffled], y[shuffled])
        )


def test_eval_view_that_cannot_be_checked_warns():
    logits, targets, truth = two_blob_logits()

    class Items(torch.utils.data.Dataset):  # labels only inside the items
        def __len__(self) -> int:
            return len(targets)

        def __getitem__(self, i: int):
            return torch.from_numpy(logits[i]), int(targets[i])

    with pytest.warns(UserWarning, match="cannot check that eval_dataset"):
        sel = find_slow_learnable(
            torch.nn.Identity(), Items(), eval_dataset=Items(), backend="sklearn", progress=False
        )
    np.testing.assert_array_equal(sel.mask, truth)


def test_the_global_rngs_are_left_alone():
    """The output collection's DataLoader draws its seed from its own generator."""
    logits, targets, _ = two_blob_logits()
    data = TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets))
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is the point
    find_slow_learnable(torch.nn.Identity(), data, progress=False)
    find_slow_learnable(torch.nn.Identity(), data, num_workers=1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])


def test_bfloat16_logits_are_accepted():
    logits, targets, _ = two_blob_logits()
    low = torch.from_numpy(logits).bfloat16()
    sel = find_slow_learnable(logits=low, targets=targets, backend="sklearn")
    ref = find_slow_learnable(logits=low.float(), targets=targets, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, ref.mask)


def test_device_other_than_the_models_is_an_error():
    logits, targets, _ = two_blob_logits()
    data = TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets))
    model = torch.nn.Linear(logits.shape[1], logits.shape[1])  # weights on the CPU
    with pytest.raises(ValueError, match=r"device should be where the model is \(cpu\)"):
        find_slow_learnable(model, data, device="meta", progress=False)
    for same in ("cpu", "cpu:0", torch.device("cpu")):
        find_slow_learnable(model, data, device=same, progress=False)


def test_the_slow_cluster_is_the_one_with_the_higher_mean_loss_not_median(monkeypatch):
    """Cluster 1 has the higher mean loss (one outlier) but the lower median: it is chosen."""
    from useful_data._cluster import KMeans2

    t = np.array([-5.0, -5.0, -5.0, -5.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    logits = np.stack([np.zeros_like(t), t], axis=1)  # class 0's loss: log(1 + e^t)
    targets = np.zeros(10, dtype=np.int64)
    partition = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    monkeypatch.setattr(KMeans2, "fit_predict_many", lambda self, x, groups: [partition])
    with pytest.warns(RuntimeWarning, match="weakly separated"):  # the AUC ranks by median
        sel = find_slow_learnable(logits=logits, targets=targets)
    assert sel.indices.tolist() == [0, 1, 2, 3, 4]
    loss = sel.loss
    assert loss[:5].mean() > loss[5:].mean() and np.median(loss[:5]) < np.median(loss[5:])


def test_clusters_with_equal_mean_loss_are_left_unsplit():
    """Two clusters of the same loss: neither is the higher-loss one, so nothing is upsampled."""
    logits = np.array([[0.0, 5.0, 0.0]] * 5 + [[0.0, 0.0, 5.0]] * 5, dtype=np.float32)
    targets = np.zeros(10, dtype=np.int64)
    with pytest.warns(RuntimeWarning, match="same mean loss"):
        sel = find_slow_learnable(logits=logits, targets=targets)
    assert sel.num_slow_learnable == 0
    assert sel.unsplit == {0: "equal mean loss in both clusters"}


def test_defaults_are_the_papers():
    """Raw logits, 10 restarts and an upsampling factor of 2, wherever a selection is made."""
    from useful_data.slow_learnable import _select_from_logits as select_from_logits

    logits, targets, _ = two_blob_logits()
    for sel in (
        find_slow_learnable(logits=logits, targets=targets),
        select_from_logits(logits, targets),
    ):
        assert sel.params["features"] == "logits" and sel.params["n_init"] == 10
        assert sel.upsample_factor == 2
    assert (
        Selection(mask=np.ones(2, bool), loss=np.ones(2), targets=np.zeros(2, int)).upsample_factor
        == 2
    )


def test_default_features_are_raw_logits_not_probs():
    """The paper clusters raw logits. Softmax drops an offset common to all of a row's logits,
    so two groups that differ only by such an offset (+10 / -10) split on logits, not on probs."""
    margin = np.array([3.0] * 8 + [-1.0] * 2 + [3.0] * 2 + [-1.0] * 8, dtype=np.float32)
    offset = np.array([10.0] * 10 + [-10.0] * 10, dtype=np.float32)
    logits = np.stack([offset + margin, offset], axis=1)
    targets = np.zeros(20, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the offset split is weak by loss
        on_logits = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
        on_probs = find_slow_learnable(
            logits=logits, targets=targets, backend="sklearn", features="probs"
        )
    assert on_logits.indices.tolist() == list(range(10, 20))  # the -10 group: higher mean loss
    assert on_probs.indices.tolist() == [8, 9, *range(12, 20)]  # margin -1: the high-loss rows


def test_each_class_is_clustered_in_dataset_order():
    """Each class is clustered as KMeans(...).fit_predict(logits[targets == c]) clusters it:
    rows in dataset order (an unstable sort of the labels would permute them, and k-means++
    draws its seeds by row index), the higher-loss cluster selected."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(6)
    logits = rng.normal(size=(1500, 6)).astype(np.float32)
    targets = rng.integers(0, 6, 1500)
    with warnings.catch_warnings(), threadpool_limits(1):  # both sides with the same threads
        warnings.simplefilter("ignore", RuntimeWarning)
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn", seed=3)
        expected = np.zeros(1500, dtype=bool)
        for c in range(6):
            rows = np.flatnonzero(targets == c)
            km = KMeans(2, n_init=10, random_state=3, algorithm="lloyd")
            one = km.fit_predict(logits[rows]) == 1
            loss = sel.loss[rows]
            expected[rows[one if loss[one].mean() > loss[~one].mean() else ~one]] = True
    np.testing.assert_array_equal(sel.mask, expected)


def test_a_class_k_means_leaves_in_one_cluster_is_unsplit_and_warned(monkeypatch):
    """A backend answering one cluster (all 0 or all 1) upsamples none of the class."""
    from useful_data._cluster import KMeans2

    logits = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    targets = np.zeros(10, dtype=np.int64)
    for answer in (np.zeros(10, dtype=np.int64), np.ones(10, dtype=np.int64)):
        monkeypatch.setattr(KMeans2, "fit_predict_many", lambda self, x, g, a=answer: [a])
        with pytest.warns(RuntimeWarning, match="k-means put all their examples in one cluster"):
            sel = find_slow_learnable(logits=logits, targets=targets)
        assert sel.num_slow_learnable == 0
        assert sel.unsplit == {0: "k-means found a single cluster"}
