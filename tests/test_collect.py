"""collect_outputs: the memory layout the model is fed (channels_last on a CPU by default)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from useful_data import find_slow_learnable
from useful_data._batches import default_batch_size, try_channels_last
from useful_data.collect import collect_outputs

CL = torch.channels_last


def _images(n: int = 50, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 3
    images = torch.randn(n, 3, 8, 8, generator=g)
    images[torch.arange(n), targets] += 2.0  # the class lights up one channel
    return TensorDataset(images, targets)


def _conv_net(flatten: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        flatten if flatten is not None else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def _record_layouts(model: nn.Module) -> list[bool]:
    """One entry per forward call: whether the input was channels_last (and not contiguous)."""
    seen: list[bool] = []

    def hook(module, args):
        x = args[0]
        seen.append(x.is_contiguous(memory_format=CL) and not x.is_contiguous())

    model.register_forward_pre_hook(hook)
    return seen


class _ViewFlatten(nn.Module):
    """``x.view(B, -1)``, as old CNNs flatten: it fails on a channels_last activation."""

    def forward(self, x):
        return x.view(x.shape[0], -1)


class _LayoutDependent(nn.Module):
    """A (buggy) model whose output depends on the memory layout of its input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x).mean(dim=(2, 3))
        return y if x.is_contiguous() else -y


def test_auto_feeds_channels_last_on_a_cpu_with_the_same_logits():
    data = _images()
    model = _conv_net()
    model(data.tensors[0][:2])  # materialise the lazy layer
    reference, targets = collect_outputs(
        model, data, batch_size=16, progress=False, channels_last=False
    )
    seen = _record_layouts(model)
    outputs, same_targets = collect_outputs(model, data, batch_size=16, progress=False)
    # 4 batches; the first runs twice (as it comes, then channels_last), the rest channels_last.
    assert seen == [False, True, True, True, True]
    torch.testing.assert_close(outputs, reference, rtol=1e-4, atol=1e-5)
    assert torch.equal(targets, same_targets)
    assert all(p.is_contiguous() for p in model.parameters())  # the model is not changed


def test_channels_last_false_and_true_are_obeyed():
    data = _images()
    model = _conv_net()
    model(data.tensors[0][:2])
    seen = _record_layouts(model)
    collect_outputs(model, data, batch_size=16, progress=False, channels_last=False)
    assert seen == [False] * 4
    seen.clear()
    forced, _ = collect_outputs(model, data, batch_size=16, progress=False, channels_last=True)
    assert seen == [True] * 4
    seen.clear()
    auto, _ = collect_outputs(model, data, batch_size=16, progress=False)
    assert torch.equal(forced, auto)  # auto kept channels_last for every batch, the first too


def test_a_model_that_fails_on_channels_last_falls_back_silently():
    data = _images()
    model = _conv_net(flatten=_ViewFlatten())
    model(data.tensors[0][:2])
    with pytest.raises(RuntimeError, match="view"):
        model(data.tensors[0][:2].contiguous(memory_format=CL))  # the premise
    reference, _ = collect_outputs(model, data, batch_size=16, progress=False, channels_last=False)
    seen = _record_layouts(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs, _ = collect_outputs(model, data, batch_size=16, progress=False)
    assert torch.equal(outputs, reference)
    assert seen == [False, True, False, False, False]  # tried once, then as the inputs come


def test_a_model_whose_outputs_depend_on_the_layout_warns_and_keeps_the_inputs_as_they_come():
    data = _images()
    model = _LayoutDependent()
    reference, _ = collect_outputs(model, data, batch_size=16, progress=False, channels_last=False)
    with pytest.warns(UserWarning, match="memory layout.*channels_last=False"):
        outputs, _ = collect_outputs(model, data, batch_size=16, progress=False)
    assert torch.equal(outputs, reference)


def test_auto_leaves_models_without_convolutions_and_other_inputs_alone():
    x = torch.randn(20, 3, 4, 4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    seen = _record_layouts(mlp)
    collect_outputs(mlp, TensorDataset(x), batch_size=8, progress=False)
    assert seen == [False] * 3  # not tried, and the first batch ran once
    conv = _conv_net()
    cpu = torch.device("cpu")
    assert try_channels_last(conv, x, cpu)
    assert not try_channels_last(conv, x, torch.device("cuda"))  # GPUs: as the inputs come
    assert not try_channels_last(conv, x.to(torch.float64).flatten(1), cpu)  # not 4-D
    assert not try_channels_last(conv, x.to(torch.int64), cpu)  # not floating point
    assert not try_channels_last(conv, x.contiguous(memory_format=CL), cpu)  # already
    assert not try_channels_last(conv, {"image": x}, cpu)  # not a tensor
    assert not try_channels_last(mlp, x, cpu)  # no convolution
    conv.compile()  # lazy: nothing is compiled until a call; a new layout would recompile
    assert not try_channels_last(conv, x, cpu)


def test_bad_channels_last_is_a_clear_error():
    with pytest.raises(ValueError, match=r"channels_last should be None.*True or False.*'yes'"):
        collect_outputs(nn.Linear(2, 2), TensorDataset(torch.zeros(2, 2)), channels_last="yes")


def test_find_slow_learnable_passes_channels_last_on():
    data = _images(90)
    model = _conv_net()
    model(data.tensors[0][:2])
    seen = _record_layouts(model)
    kwargs = {"batch_size": 32, "progress": False, "backend": "sklearn", "n_init": 3}
    as_they_come = find_slow_learnable(model, data, channels_last=False, **kwargs)
    assert seen == [False] * 3
    seen.clear()
    auto = find_slow_learnable(model, data, **kwargs)
    assert seen == [False, True, True, True]
    np.testing.assert_array_equal(auto.mask, as_they_come.mask)


def test_default_batch_size_is_128_on_a_cpu_and_256_elsewhere():
    assert default_batch_size("cpu") == 128
    assert default_batch_size(torch.device("cuda")) == 256
    sizes: list[int] = []
    model = nn.Linear(4, 2)
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    data = TensorDataset(torch.randn(300, 4), torch.arange(300) % 2)
    collect_outputs(model, data, progress=False)
    assert sizes == [128, 128, 44]
    sizes.clear()
    find_slow_learnable(model, data, progress=False, backend="sklearn", n_init=1)
    assert sizes == [128, 128, 44]
    sizes.clear()
    collect_outputs(model, data, batch_size=200, progress=False)
    assert sizes == [200, 100]
    with pytest.raises(ValueError, match="batch_size should be an integer >= 1"):
        collect_outputs(model, data, batch_size=0)


def test_non_finite_outputs_are_not_blamed_on_the_layout():
    data = _images(20)
    model = _conv_net()
    model(data.tensors[0][:2])
    with torch.no_grad():
        model[-1].bias[0] = float("nan")  # every output row holds a NaN
    seen = _record_layouts(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "outputs change with the memory layout" warning
        outputs, _ = collect_outputs(model, data, batch_size=16, progress=False)
    assert outputs[:, 0].isnan().all() and outputs[:, 1:].isfinite().all()
    assert seen == [False, True, True]  # channels_last kept
    with pytest.raises(ValueError, match="finite"):  # the selection reports them
        find_slow_learnable(model, data, progress=False)


class _Returns(nn.Module):
    """A linear classifier that returns ``wrap(features, logits)``."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.linear, self.wrap = nn.Linear(3, 2), wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(x, self.linear(x))


def test_model_output_forms():
    """Logits alone, a 1-tuple, an object with .logits and a dict give the same outputs; a
    tuple of several tensors uses the first and says so (it may be (features, logits))."""
    data = TensorDataset(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    plain = _Returns(lambda features, logits: logits)
    expected, _ = collect_outputs(plain, data, progress=False)

    class Output:
        def __init__(self, logits):
            self.logits = logits

    for wrap in (
        lambda f, z: (z,),
        lambda f, z: Output(z),
        lambda f, z: {"logits": z},
    ):
        model = _Returns(wrap)
        model.linear = plain.linear
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            outputs, _ = collect_outputs(model, data, progress=False)
        assert torch.equal(outputs, expected)
    model = _Returns(lambda f, z: (z, f))
    model.linear = plain.linear
    with pytest.warns(UserWarning, match=r"first, of shape \(10, 2\), is taken as the logits"):
        outputs, _ = collect_outputs(model, data, progress=False)
    assert torch.equal(outputs, expected)
    model = _Returns(lambda f, z: {"features": f})
    with pytest.raises(TypeError, match="the model should return logits"):
        collect_outputs(model, data, progress=False)


def test_outputs_are_eval_mode_outputs_and_batchnorm_statistics_are_untouched():
    """Dropout off and BatchNorm on its running statistics while collecting; the model is
    left in training mode with the statistics it had."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    x = torch.randn(32, 4)
    stats = model[1].running_mean.clone()
    outputs, _ = collect_outputs(
        model, TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8, progress=False
    )
    assert model.training
    assert torch.equal(model[1].running_mean, stats)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(outputs, expected)


def test_a_model_whose_output_width_depends_on_the_layout_falls_back():
    """A channels_last output of another shape is caught (warning, inputs as they come)."""

    class LayoutDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).mean((2, 3))
            if not x.is_contiguous():  # channels_last input
                y = torch.cat([y, y[:, :1]], dim=1)
            return y

    data = TensorDataset(torch.randn(6, 3, 4, 4), torch.zeros(6, dtype=torch.long))
    with pytest.warns(UserWarning, match="memory layout"):
        outputs, _ = collect_outputs(LayoutDependent(), data, progress=False)
    assert outputs.shape == (6, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk_bytes", [1, 200, 32 * 2**20])  # a copy per batch ... one
def test_a_cuda_model_gives_the_cpu_outputs_on_the_cpu(monkeypatch, chunk_bytes):
    import useful_data.collect

    monkeypatch.setattr(useful_data.collect, "_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    )
    images = torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(images, torch.arange(50) % 3)
    on_cpu, labels_cpu = collect_outputs(model, data, batch_size=16, progress=False)
    on_gpu, labels_gpu = collect_outputs(model.cuda(), data, batch_size=16, progress=False)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    assert torch.equal(labels_gpu, labels_cpu)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)  # TF32 convolutions
    with pytest.raises(ValueError, match="device should be where the model is"):
        collect_outputs(model, data, device="cpu", progress=False)


@pytest.mark.parametrize("chunk_bytes", [0, 1, 200, 10**9])
def test_outputs_written_in_chunks_land_in_their_rows(chunk_bytes):
    """On an accelerator the logits wait in chunks before one copy to the CPU (one sync per
    chunk, not per batch): every chunk size gives the same rows."""
    from useful_data.collect import _Rows

    batches = [torch.randn(n, 3, generator=torch.Generator().manual_seed(n)) for n in (4, 1, 7, 5)]
    outputs = torch.full((17, 3), float("nan"))
    rows, start = _Rows(chunk_bytes), 0
    for logits in batches:
        rows.write(outputs, start, logits)
        start += logits.shape[0]
    rows.flush(outputs)
    assert torch.equal(outputs, torch.cat(batches))
