"""What QKT is compared with, in pure PyTorch (no Flower import), on the same data, models and test view.

- :mod:`.ensemble` — the teachers' averaged logits as a predictor (no training);
- :mod:`.distill` — vanilla KD from all teachers (no mask, one phase) and FedDF's ensemble distillation;
- :mod:`.averaging` — FedAvg's weighted parameter average (used by the FedDF fusion; the federated
  FedAvg/FedProx baselines use Flower's own strategies);
- :mod:`.proximal` — a client round of FedAvg (``mu = 0``) or FedProx (``mu > 0``).
"""
