"""qkt-flower: Query-based Knowledge Transfer (QKT, ICLR 2025) on Flower.

Layout: ``data`` (datasets, partitions, query scenario), ``models`` (one features/head contract),
``qkt`` (the algorithm in pure PyTorch, no Flower import), ``fl`` (Flower apps and strategy),
``reference`` (the single-process oracle runner).
"""

__version__ = "0.1.0"
