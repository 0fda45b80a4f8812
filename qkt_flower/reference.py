"""Centralised reference runner: the whole QKT pipeline in one process, without Flower.

``python -m qkt_flower.reference`` (or ``qkt-reference``) trains every client, probes the teachers,
masks, selects experts, runs query learning on the querying client and writes ``results.json`` plus
the resolved config into Hydra's run folder (``outputs/<date>/<time>/``). It is the oracle the
Flower version must agree with.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from qkt_flower import workflow as wf
from qkt_flower.config import CONF_DIR, ExperimentConfig, to_config
from qkt_flower.data.federation import build_federation
from qkt_flower.errors import ConfigError, DataNotFoundError
from qkt_flower.qkt.evaluate import evaluate_view
from qkt_flower.qkt.mask import mask_quality
from qkt_flower.qkt.probe import check_probe_reply
from qkt_flower.results import save_results

log = logging.getLogger(__name__)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run_reference(cfg: ExperimentConfig) -> dict:
    """Run one experiment end to end; returns the results dictionary (see README, "Results files")."""
    torch.manual_seed(cfg.seed)
    device = wf.resolve_device(cfg.device)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    fed = build_federation(cfg)
    scen = fed.scenario
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    models = {k: wf.train_client(cfg, fed, k, device) for k in range(fed.num_clients)}
    seconds["local_training"] = time.perf_counter() - start

    teachers = [k for k in range(fed.num_clients) if k != scen.client]
    start = time.perf_counter()
    scores, rejected = {}, {}
    for k in teachers:
        reply = wf.answer_probe(cfg, models[k], fed.train.input_shape, device)
        reason = check_probe_reply(reply, fed.train.num_classes)
        if reason is None:
            scores[k] = reply
        else:
            rejected[k] = reason
            log.warning("teacher %d: probe reply rejected (%s)", k, reason)
    masks, selection = wf.choose_experts(cfg, scores, scen.query_classes)
    seconds["probe_and_mask"] = time.perf_counter() - start
    profiles = wf.true_profiles(cfg, fed, scores)

    view = fed.test_view()

    def evaluate(model: torch.nn.Module) -> dict:
        return evaluate_view(model, view, scen.query_classes, scen.local_classes, device=device)

    experts = wf.make_experts(models, masks, selection)
    phases: dict[str, dict] = {}

    def record_phase(name: str, model: torch.nn.Module) -> None:
        phases[name] = evaluate(model)

    student, info = wf.learn_query(cfg, fed, models[scen.client], experts, device, on_phase_end=record_phase)
    seconds.update({f"query_{k}": v for k, v in info["seconds"].items()})

    start = time.perf_counter()
    evaluation = {"before": evaluate(models[scen.client]), "after": evaluate(student)}
    seconds["evaluate"] = time.perf_counter() - start
    if cfg.strategy.control:
        start = time.perf_counter()
        control = wf.control_model(cfg, fed, models[scen.client], device)
        evaluation["control"] = evaluate(control)
        seconds["control"] = time.perf_counter() - start

    sizes = {k: len(scen.partitions[k]) for k in range(fed.num_clients)}
    for name in cfg.baselines.one_round:
        start = time.perf_counter()
        others = {k: models[k] for k in teachers}
        model = wf.one_round_baseline(cfg, fed, name, models[scen.client], others, sizes, device)
        evaluation[name] = evaluate(model)
        seconds[name] = time.perf_counter() - start

    model_bytes = _param_bytes(models[scen.client])
    num_classes = fed.train.num_classes
    return {
        "method": "qkt",
        "mode": cfg.strategy.mode,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "partition": cfg.partition.kind,
        "classes": list(fed.train.classes),
        "querying_client": scen.client,
        "shots": cfg.query.shots,
        "query_classes": list(scen.query_classes),
        "local_classes": list(scen.local_classes),
        "class_counts": {k: fed.class_counts(k).tolist() for k in range(fed.num_clients)},
        "probe": {
            "scores": {k: v.tolist() for k, v in scores.items()},
            "masks": {k: torch.nonzero(m).flatten().tolist() for k, m in masks.items()},
            "true_profiles": {k: torch.nonzero(p).flatten().tolist() for k, p in profiles.items()},
            "rejected": rejected,
            "quality": mask_quality(masks, profiles),
            "quality_query": _query_mask_quality(masks, profiles, scen.query_classes),
        },
        "experts": {c: ks for c, ks in selection.experts.items()},
        "fallbacks": selection.fallbacks,
        **{k: v for k, v in evaluation.items()},
        "gain": {
            key: evaluation["after"][key] - evaluation["before"][key]
            for key in ("query_acc", "local_acc", "overall_acc", "mean_acc")
        },
        "phases": phases,
        "calibration_shift": info["calibration_shift"],
        "history": info["history"],
        "bytes": {
            "probe_replies": len(scores) * num_classes * 4,
            "expert_weights": len(selection.relevant) * model_bytes,
            "all_teacher_weights": len(teachers) * model_bytes,
        },
        "seconds": seconds,
    }


def _query_mask_quality(masks, profiles, query_classes) -> dict[str, float]:
    """Precision/recall of "teacher k is an expert of query class c" against the true profiles."""
    sub = {k: m[list(query_classes)] for k, m in masks.items()}
    truth = {k: p[list(query_classes)] for k, p in profiles.items()}
    return mask_quality(sub, truth)


def summary_line(results: dict) -> str:
    """One human line of a run's outcome."""
    b, a = results["before"], results["after"]
    line = (
        f"seed {results['seed']} Q={results['query_classes']}: query {100 * b['query_acc']:.1f} -> "
        f"{100 * a['query_acc']:.1f} %, local {100 * b['local_acc']:.1f} -> {100 * a['local_acc']:.1f} %, "
        f"mask P/R {results['probe']['quality']['precision']:.2f}/{results['probe']['quality']['recall']:.2f}"
    )
    if "control" in results:
        c = results["control"]
        line += f"; balanced-CE control: query {100 * c['query_acc']:.1f} %, local {100 * c['local_acc']:.1f} %"
    return line


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def _hydra_main(dcfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = to_config(dcfg)
        results = run_reference(cfg)
    except (ConfigError, DataNotFoundError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    path = save_results(out_dir, results, dcfg)
    print(summary_line(results))
    print(f"results: {path}")
    return results["after"]["mean_acc"]


def main() -> None:
    """Console entry point ``qkt-reference`` (Hydra CLI: overrides, ``-m`` multirun)."""
    _hydra_main()


if __name__ == "__main__":
    main()
