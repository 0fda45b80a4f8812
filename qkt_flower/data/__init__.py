"""Data: datasets registry, flwr-datasets partitioning, the query scenario and in-memory batches."""

from qkt_flower.data.datasets import DATASETS, DatasetSpec, load_dataset
from qkt_flower.data.images import ImageDataset
from qkt_flower.data.loaders import Batch, Batches, image_batches, normalizer
from qkt_flower.data.partition import PARTITIONS, PartitionSpec, class_profile, partition_indices
from qkt_flower.data.query import QueryScenario, QuerySpec, check_label_space, make_query_scenario, view_indices

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageDataset",
    "load_dataset",
    "Batch",
    "Batches",
    "image_batches",
    "normalizer",
    "PARTITIONS",
    "PartitionSpec",
    "class_profile",
    "partition_indices",
    "QueryScenario",
    "QuerySpec",
    "check_label_space",
    "make_query_scenario",
    "view_indices",
]
