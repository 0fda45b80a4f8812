"""Data: datasets registry, flwr-datasets partitioning, the query scenario and in-memory batches."""

from qkt_flower.data.datasets import DATASETS, ImageDataset, load_dataset
from qkt_flower.data.loaders import Batch, Batches, image_batches, normalizer
from qkt_flower.data.partition import PARTITIONS, class_profile, partition_indices
from qkt_flower.data.query import QueryScenario, make_query_scenario, view_indices

__all__ = [
    "DATASETS",
    "ImageDataset",
    "load_dataset",
    "Batch",
    "Batches",
    "image_batches",
    "normalizer",
    "PARTITIONS",
    "class_profile",
    "partition_indices",
    "QueryScenario",
    "make_query_scenario",
    "view_indices",
]
