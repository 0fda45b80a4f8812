"""Centralised reference runner: the whole QKT pipeline in one process, without Flower.

``qkt-reference`` (or ``python -m qkt_flower.reference``) trains every client, probes the teachers, masks,
selects experts, runs the method on the querying client and writes ``results.json`` plus the resolved config
into Hydra's run folder (``outputs/<date>/<time>/``). It is the oracle the Flower runtime must agree with.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from qkt_flower.config import CONF_DIR, ExperimentConfig, to_config
from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments import steps
from qkt_flower.experiments.federated import one_round_baseline
from qkt_flower.experiments.pipeline import prepare
from qkt_flower.qkt.compose import inference_cost
from qkt_flower.qkt.mask import mask_quality
from qkt_flower.results import ACCURACIES, check_writable, save_results

log = logging.getLogger(__name__)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run_reference(cfg: ExperimentConfig) -> dict:
    """Run one experiment end to end; returns the results dictionary (``docs/RESULTS.md``, "results.json")."""
    exp = prepare(cfg)
    fed, scen, seconds = exp.fed, exp.fed.scenario, exp.seconds
    start = time.perf_counter()
    scores, rejected = exp.scores()
    seconds["probe_and_mask"] = time.perf_counter() - start
    phases: dict[str, dict] = {}
    student, info = exp.learn(on_phase_end=lambda name, model: phases.__setitem__(name, exp.evaluate(model)))
    masks, selection = info["masks"], info["selection"]
    seconds.update({f"query_{k}": v for k, v in info["seconds"].items()})
    start = time.perf_counter()
    evaluation = {"before": exp.evaluate(exp.models[scen.client]), "after": exp.evaluate(student)}
    seconds["evaluate"] = time.perf_counter() - start
    if cfg.control and cfg.method.teachers:
        start = time.perf_counter()
        evaluation["control"] = exp.evaluate(steps.control_model(cfg, fed, exp.models[scen.client], exp.device))
        seconds["control"] = time.perf_counter() - start
    sizes = {k: len(scen.partitions[k]) for k in exp.models}
    for name in cfg.baselines.one_round:
        start = time.perf_counter()
        others = {k: exp.models[k] for k in exp.teachers}
        model = one_round_baseline(cfg, fed, name, exp.models[scen.client], others, sizes, exp.device)
        evaluation[name] = exp.evaluate(model)
        seconds[name] = time.perf_counter() - start
    profiles = steps.true_profiles(cfg, fed, scores)
    model_bytes = _param_bytes(exp.models[scen.client])
    return {
        "runtime": "reference",
        "method": cfg.method.name,
        "teachers": cfg.method.teachers,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "partition": cfg.partition.kind,
        "classes": list(fed.train.classes),
        "querying_client": scen.client,
        "shots": cfg.query.shots,
        "query_classes": list(scen.query_classes),
        "local_classes": list(scen.local_classes),
        "class_counts": {k: fed.class_counts(k).tolist() for k in exp.models},
        "probe": {
            "scores": {k: v.tolist() for k, v in scores.items()},
            "masks": {k: torch.nonzero(m).flatten().tolist() for k, m in masks.items()},
            "true_profiles": {k: torch.nonzero(p).flatten().tolist() for k, p in profiles.items()},
            "rejected": rejected,
            "quality": mask_quality(masks, profiles) if masks else None,
            "quality_query": _query_mask_quality(masks, profiles, scen.query_classes) if masks else None,
        },
        "experts": selection.experts if selection else {},
        "fallbacks": selection.fallbacks if selection else [],
        **evaluation,
        "gain": {key: evaluation["after"][key] - evaluation["before"][key] for key in ACCURACIES},
        "phases": phases,
        "calibration_shift": info["calibration_shift"],
        "history": info["history"],
        "bytes": {
            "probe_replies": len(scores) * fed.train.num_classes * 4,
            "expert_weights": len(selection.relevant if selection else []) * model_bytes,
            "all_teacher_weights": len(exp.teachers) * model_bytes,
        },
        "inference_cost": inference_cost(student, exp.models[scen.client], tuple(fed.train.input_shape)),
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
        f"{100 * a['query_acc']:.1f} %, local {100 * b['local_acc']:.1f} -> {100 * a['local_acc']:.1f} %"
    )
    if results["probe"].get("quality"):
        q = results["probe"]["quality"]
        line += f", mask P/R {q['precision']:.2f}/{q['recall']:.2f}"
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
        if cfg.resume:  # the reference runner keeps no checkpoint: a silent retrain would look like a resume
            why = "false here: qkt-reference keeps no checkpoint (resume is for qkt-flower and flwr run)"
            raise ConfigError("resume", True, f"{why}; trained local models are reused from local.cache_dir")
        if len(cfg.queriers()) > 1:
            why = "null here: qkt-reference runs one querying client (query.client=N, once per client)"
            raise ConfigError("query.clients", cfg.query.clients, f"{why}; qkt-flower serves several in one run")
        check_writable(out_dir, cfg.overwrite)
        results = run_reference(cfg)
        path = save_results(out_dir, results, dcfg, overwrite=cfg.overwrite)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary_line(results))
    print(f"results: {path}")
    return results["after"]["mean_acc"]


def main() -> None:
    """Console entry point ``qkt-reference`` (Hydra CLI: overrides, ``-m`` multirun)."""
    _hydra_main()


if __name__ == "__main__":
    main()
