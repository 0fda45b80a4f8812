"""Flower's deployment runtime for QKT: credentials, a local SuperLink + SuperNodes, and ``flwr run`` over them."""
