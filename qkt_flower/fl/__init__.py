"""Flower glue: the ClientApp, the QKT strategy and the ServerApp; the algorithm lives in ``qkt_flower.qkt``."""
