"""Partitions: every screen asset is partitioned by dataset × cell line.

Both dimensions are dynamic: the inbox sensor adds keys when a new screen arrives. Keys are
sanitised with :func:`cellrep_ml.config.partition_key`; the partition-set names are
namespaced so they cannot collide with another code location's.
"""

from __future__ import annotations

import dagster as dg

dataset_partitions = dg.DynamicPartitionsDefinition(name="cellrep_dataset")
cell_line_partitions = dg.DynamicPartitionsDefinition(name="cellrep_cell_line")

screen_partitions = dg.MultiPartitionsDefinition(
    {"dataset": dataset_partitions, "cell_line": cell_line_partitions}
)


#: A dataset-partitioned asset and a dataset × cell-line one: each dataset partition
#: corresponds to every cell line of that dataset (both directions).
BY_DATASET = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")


def screen_key(dataset_key: str, cell_line_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset_key, "cell_line": cell_line_key})


def split_key(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(dataset key, cell-line key) of the partition being materialized."""
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["cell_line"]
