"""The README's two-line usage, end to end, with a tiny model on FakeData and synthetic data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from useful_data import UpsampleSampler, USEFULDataset, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def _tiny_cnn(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def _train(model, loader, epochs=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_two_line_usage_on_fakedata(tmp_path):
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    train_set = FakeData(
        size=96, image_size=(3, 16, 16), num_classes=4, transform=to_tensor, random_offset=0
    )
    model = _tiny_cnn(4)
    _train(model, DataLoader(train_set, batch_size=16, shuffle=True), epochs=2)

    selection = find_slow_learnable(model, train_set, batch_size=32, progress=False)
    assert model.training  # restored
    assert 0 < selection.num_slow_learnable < len(train_set)
    labels = np.array([int(train_set[i][1]) for i in range(len(train_set))])
    np.testing.assert_array_equal(selection.targets, labels)

    upsampled = USEFULDataset(train_set, selection)
    assert len(upsampled) == len(train_set) + selection.num_slow_learnable
    fresh = _tiny_cnn(4)
    loader = DataLoader(upsampled, batch_size=16, shuffle=True)
    assert len(loader) == -(-len(upsampled) // 16)
    _train(fresh, loader)

    sampler = UpsampleSampler(selection, seed=0)
    assert Counter(sampler) == Counter(upsampled.index_map.tolist())

    # the selection survives a round trip through a file, as the CLI and timm patch use it
    reloaded = USEFULDataset(train_set, selection.save(tmp_path / "sel.npz"))
    np.testing.assert_array_equal(reloaded.index_map, upsampled.index_map)


def test_two_line_usage_on_the_synthetic_distribution():
    train_set = make_simplicity_bias_data(1000, seed=1)
    model = ToyCNN(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(250):  # early full-batch GD, the paper's toy setting
        loss = nn.functional.cross_entropy(model(train_set.inputs), train_set.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    selection = find_slow_learnable(model, train_set, progress=False)
    train_set_useful = USEFULDataset(train_set, selection)  # fingerprint checked via .targets
    slow = ~train_set.has_fast_feature.numpy()
    counts = np.bincount(train_set_useful.index_map, minlength=len(train_set))
    # examples without the fast-learnable feature are (almost all) the ones seen twice
    assert (counts[slow] == 2).mean() > 0.95
    assert (counts[~slow] == 1).mean() > 0.95
