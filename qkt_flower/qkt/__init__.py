"""QKT in pure PyTorch: noise probe, expert masks, losses, phases, the training engine.

Nothing here imports Flower: the Flower apps and the reference runner both call these functions.
"""

from qkt_flower.qkt.engine import OptimSpec, fit, predict_logits
from qkt_flower.qkt.evaluate import accuracy_report, evaluate_view
from qkt_flower.qkt.local import train_local
from qkt_flower.qkt.mask import MASK_RULES, ExpertSelection, expert_mask, mask_quality, select_experts
from qkt_flower.qkt.phases import MODES, Expert, PhaseSpec, QKTSpec, QueryTask, balanced_finetune, query_learning
from qkt_flower.qkt.probe import NOISE_KINDS, check_probe_reply, make_probe, probe_answer, probe_scores

__all__ = [
    "OptimSpec",
    "fit",
    "predict_logits",
    "accuracy_report",
    "evaluate_view",
    "train_local",
    "MASK_RULES",
    "ExpertSelection",
    "expert_mask",
    "mask_quality",
    "select_experts",
    "MODES",
    "Expert",
    "PhaseSpec",
    "QKTSpec",
    "QueryTask",
    "balanced_finetune",
    "query_learning",
    "NOISE_KINDS",
    "check_probe_reply",
    "make_probe",
    "probe_answer",
    "probe_scores",
]
