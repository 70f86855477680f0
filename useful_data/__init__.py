"""useful-data: USEFUL (UpSample Early For Uniform Learning) for PyTorch training loops.

Train for a few epochs, find the slow-learnable examples with `find_slow_learnable`,
then restart training from scratch on `USEFULDataset` (or with
`UpsampleSampler`), where they appear twice, with SGD or `SAM`.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024.
"""

from useful_data._version import __version__
from useful_data.dataset import USEFULDataset
from useful_data.iterable_dataset import USEFULIterableDataset
from useful_data.sam import SAM
from useful_data.sampler import UpsampleSampler
from useful_data.selection import ClassSummary, Selection
from useful_data.slow_learnable import find_slow_learnable

__all__ = [
    "SAM",
    "ClassSummary",
    "Selection",
    "USEFULDataset",
    "USEFULIterableDataset",
    "UpsampleSampler",
    "__version__",
    "find_slow_learnable",
]
