"""`UpsampleSampler` under Ray Train: 2 workers on CPU, every item of every epoch counted.

Ray Train's ``prepare_data_loader`` replaces any sampler that is not a ``DistributedSampler``
with a plain ``DistributedSampler`` (the upsampling would be gone, silently); it keeps ours,
which is one, and the sampler shards itself by the rank of the process group Ray sets up.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

N, SLOW = 40, list(range(0, 40, 4))
EXPECTED = Counter({**dict.fromkeys(range(N), 1), **dict.fromkeys(SLOW, 2)})


@pytest.mark.slow
def test_ray_train_keeps_the_sampler_and_each_epoch_is_the_upsampled_multiset(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Defined here, not at module level: Ray's workers receive it by value (cloudpickle) and
    # could not import this test module by name.
    def train_loop(config: dict[str, Any]) -> None:
        import ray.train
        import torch
        from ray.train.torch import prepare_data_loader
        from torch.utils.data import DataLoader, TensorDataset

        from useful_data import UpsampleSampler

        sampler = UpsampleSampler(SLOW, num_examples=N, seed=0)
        loader = DataLoader(TensorDataset(torch.arange(N)), batch_size=5, sampler=sampler)
        loader = prepare_data_loader(loader, move_to_device=False)
        assert loader.sampler is sampler  # kept, not replaced by a plain DistributedSampler
        seen = {}
        for epoch in range(2):
            sampler.set_epoch(epoch)
            seen[epoch] = [int(i) for (batch,) in loader for i in batch]
        rank = ray.train.get_context().get_world_rank()
        Path(config["out"], f"{rank}.json").write_text(json.dumps(seen))
        ray.train.report({"items": len(seen[0])})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        TorchTrainer(
            train_loop,
            train_loop_config={"out": str(tmp_path)},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    per_rank = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for epoch in ("0", "1"):
        assert [len(p[epoch]) for p in per_rank] == [25, 25]
        assert Counter(per_rank[0][epoch] + per_rank[1][epoch]) == EXPECTED
    assert per_rank[0]["0"] != per_rank[0]["1"]  # set_epoch reshuffled
