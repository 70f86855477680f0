"""USEFUL's selection step over a stream: one eval pass over an ``IterableDataset``, by key.

Past a few million examples, training data is streamed (WebDataset tar shards, Hugging Face
``datasets`` in streaming mode or ``to_iterable_dataset()``, a plain torch
``IterableDataset``) and has no integer index. `find_slow_learnable` then reads every item's
example key (WebDataset's ``__key__``, an id column, or a function item -> key), makes one
eval pass over the stream, clusters the outputs of every class as for a map-style dataset, and
returns a `Selection` whose ``keys`` name the examples: it is addressed by key, saved and
fingerprinted over its key set in any order (a stream's order can change from pass to pass),
and upsampled with `useful_data.USEFULIterableDataset`. Its rows are in the order of the key
hashes, not the stream's: k-means++ seeding depends on the order of the rows, so this makes
the selection a function of the stream's examples alone, the same whatever the number of
DataLoader workers or ranks, or the shuffling of shards.

The pass holds the ``(N, C)`` outputs, ``N`` labels and ``N`` keys, and a table of the key
hashes (16 to 32 bytes per key) to catch a key seen twice: a stream that repeats or never
ends, or one read by several DataLoader workers or ranks that do not split it. A stream with
no end and no repeated key cannot be detected: bound it with ``max_examples``.

Under ``torch.distributed`` the stream must split itself by rank (WebDataset's
``nodesplitter=wds.split_by_node``, ``datasets.distributed.split_dataset_by_node``); each rank
runs the model on its part, the parts are gathered (rank-major) and every rank returns the
same `Selection`.

Conventions: ``N`` examples, ``C`` classes (logit columns).

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024 (Algorithm 1).
"""

from useful_data._deprecation import moved_names

__all__: list[str] = []

# 1.0 made the pass's functions private: find_slow_learnable(model, stream, key=...) runs it
__getattr__ = moved_names(
    __name__,
    {
        "collect_stream_outputs": "useful_data._streaming:collect_stream_outputs",
        "stream_outputs": "useful_data._streaming:stream_outputs",
        "with_keys": "useful_data._streaming:with_keys",
    },
)
