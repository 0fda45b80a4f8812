"""QKT in pure PyTorch: noise probe, expert masks, loss terms, methods as phases, the training engine.

Nothing here imports Flower: the Flower apps and the reference runner both call these functions.
"""

from qkt_flower.qkt.calibrate import CalibrationSpec
from qkt_flower.qkt.engine import OptimSpec, fit, predict_logits
from qkt_flower.qkt.evaluate import accuracy_report, evaluate_view
from qkt_flower.qkt.learn import query_learning
from qkt_flower.qkt.local import LocalSpec, train_local
from qkt_flower.qkt.mask import MASK_RULES, ExpertSelection, MaskSpec, expert_mask, mask_quality, select_experts
from qkt_flower.qkt.method import MethodSpec, PhaseSpec
from qkt_flower.qkt.probe import NOISE_KINDS, ProbeSpec, check_probe_reply, make_probe, probe_answer, probe_scores
from qkt_flower.qkt.task import Expert, QueryTask
from qkt_flower.qkt.terms import Terms
from qkt_flower.qkt.transfer import TransferSpec

__all__ = [
    "CalibrationSpec",
    "OptimSpec",
    "fit",
    "predict_logits",
    "accuracy_report",
    "evaluate_view",
    "query_learning",
    "LocalSpec",
    "train_local",
    "MASK_RULES",
    "ExpertSelection",
    "MaskSpec",
    "expert_mask",
    "mask_quality",
    "select_experts",
    "MethodSpec",
    "PhaseSpec",
    "NOISE_KINDS",
    "ProbeSpec",
    "check_probe_reply",
    "make_probe",
    "probe_answer",
    "probe_scores",
    "Expert",
    "QueryTask",
    "Terms",
    "TransferSpec",
]
