"""Moved in useful-data 1.0 to `useful_data.experimental`; this path warns until 1.1."""

from __future__ import annotations

from useful_data._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(
    __name__,
    {
        "IndexedDataset": "useful_data.experimental:IndexedDataset",
        "TrainingDynamics": "useful_data.experimental:TrainingDynamics",
        "select_from_dynamics": "useful_data.experimental:select_from_dynamics",
        "DYNAMICS_STRATEGIES": "useful_data.experimental.dynamics:_STRATEGIES",
        "two_means_1d": "useful_data.experimental.dynamics:_two_means_1d",
    },
)
