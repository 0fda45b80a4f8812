"""The interference grid: named variants and baselines over (split, seed, query) cells, on the in-process pipeline.

One lucky query proves nothing: every cell trains its local models once (cached under ``<out>/cache``), then
runs each variant of ``conf/variants.yaml`` and the baselines on them, and evaluates each on the querying
client's test view. Baseline rows and FedAvg / FedProx global models are cached per cell: a new variant reuses them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qkt_flower.baselines import averaging, distill, ensemble, proximal
from qkt_flower.config import CONF_DIR, load_config
from qkt_flower.experiments import federated, headroom, steps, threads
from qkt_flower.experiments.cache import code_fingerprint, key_of
from qkt_flower.experiments.pipeline import Experiment, prepare
from qkt_flower.experiments.tables import ACC
from qkt_flower.qkt import calibrate, engine, evaluate, learn, terms, transfer
from qkt_flower.qkt import method as method_spec
from qkt_flower.qkt import task as query_task
from qkt_flower.qkt.compose import inference_cost, initial_student
from qkt_flower.qkt.mask import mask_quality
from qkt_flower.qkt.terms import ce

BASELINE_CODE = (
    engine,
    method_spec,
    query_task,
    terms,
    ce,
    averaging,
    distill,
    ensemble,
    proximal,
    calibrate,
    evaluate,
    learn,
    transfer,
    federated.one_round_baseline,
    steps.control_model,
)
"""The code behind the cached baseline rows (with the local models' and the FedAvg globals' own keys)."""
ONE_ROUND = {"ensemble": "ensemble (all models)", "vanilla_kd": "vanilla KD", "feddf": "FedDF fusion"}


@dataclass(frozen=True)
class Baselines:
    """Which non-QKT methods a cell runs, and where their rows are cached (they do not depend on QKT's config)."""

    federated: tuple[str, ...] = ("fedavg",)
    rounds: int = 10
    cache: Path | None = None


def federated_inputs(cfg) -> str:
    """Hash of what a FedAvg / FedProx run starts from.

    Data, partition, query cut, model, seed and the client round's recipe (batch size, optimiser, augmentation);
    not the local models' epochs or initialisation, which the federated baselines never see, so grids over those
    share the federated globals.
    """
    recipe = {k: v for k, v in steps.step0_recipe(cfg).items() if k not in ("epochs", "shared_init")}
    return key_of([asdict(cfg.dataset), asdict(cfg.partition), asdict(cfg.query), asdict(cfg.model), recipe, cfg.seed,
                   code_fingerprint(*steps.local_training_code())])  # fmt: skip


def global_models(exp: Experiment, name: str, b: Baselines) -> dict:
    """FedAvg / FedProx global models after 1 and ``b.rounds`` rounds, cached as state dicts."""
    cfg, fed = exp.cfg, exp.fed
    mu = cfg.baselines.fedprox_mu if name == "fedprox" else 0.0
    code = code_fingerprint(
        federated.federated_round, federated.client_update, federated.federated_baseline,
        federated.initial_global_model, averaging, threads, proximal
    )  # fmt: skip
    key = key_of([federated_inputs(cfg), name, mu, cfg.baselines.epochs_per_round, b.rounds, code])
    path = b.cache / f"{name}-{key}.pt" if b.cache is not None else None
    if path is not None and path.exists():
        states = torch.load(path, map_location="cpu")
    else:
        trained = federated.federated_baseline(cfg, fed, mu, b.rounds, {1, b.rounds}, exp.device)
        states = {r: {k: v.cpu() for k, v in m.state_dict().items()} for r, m in trained.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(states, path)
    models = {}
    for rounds, state in sorted(states.items()):
        model = federated.initial_global_model(cfg, fed.train.input_shape, fed.train.num_classes)
        model.load_state_dict(state)
        models[rounds] = model.to(exp.device).eval()
    return models


def baseline_rows(exp: Experiment, row, b: Baselines) -> list[dict]:
    """Ensemble / vanilla KD / FedDF from every teacher; FedAvg / FedProx after 1 and ``b.rounds`` rounds ± FT.

    "+ FT" fine-tunes the global model with the control's recipe and budget (calibration included). Cached per cell.
    """
    cfg, fed = exp.cfg, exp.fed
    key = key_of(
        [
            steps.local_model_key(cfg),
            asdict(cfg.method),
            asdict(cfg.baselines),
            list(b.federated),
            b.rounds,
            code_fingerprint(*BASELINE_CODE),
        ]
    )
    cached = b.cache / f"baselines-{key}.json" if b.cache is not None else None
    if cached is not None and cached.exists():
        return json.loads(cached.read_text())
    teachers = {k: exp.models[k] for k in exp.teachers}
    sizes = {k: len(fed.scenario.partitions[k]) for k in exp.models}
    local = exp.models[exp.client]
    rows = [
        row(label, federated.one_round_baseline(cfg, fed, name, local, teachers, sizes, exp.device))
        for name, label in ONE_ROUND.items()
    ]
    for name in b.federated:
        label = {"fedavg": "FedAvg", "fedprox": "FedProx"}[name]
        for rounds, model in global_models(exp, name, b).items():
            rows.append(row(f"{label} ({rounds} rd)", model))
            rows.append(row(f"{label} ({rounds} rd) + FT", steps.control_model(cfg, fed, model, exp.device)))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(rows))
    return rows


def mask_columns(exp: Experiment, cfg, info: dict) -> dict[str, float]:
    """Mask precision / recall (percent) of a variant's masks against the true profiles; none without masks."""
    if not info.get("masks"):
        return {}
    q = mask_quality(info["masks"], steps.true_profiles(cfg, exp.fed, list(info["masks"])))
    return {"mask_precision": 100 * q["precision"], "mask_recall": 100 * q["recall"]}


def run_cell(
    overrides: list[str], variants: dict[str, list[str]], baselines: Baselines | None, device=None, oracle=False
) -> list[dict]:
    """Every variant and the baselines on one (split, seed, query) cell; rows in percent.

    A variant's row adds ``experts`` (teachers whose weights it fetched), ``flops_x`` (its inference FLOPs
    per image over the client's model: 1 unless the student composes the experts' extractors) and, for a variant
    with teachers, ``mask_precision`` / ``mask_recall`` (its masks against the teachers' true class profiles: what
    the server learnt of them from the probe, in percent). A weight-merge
    variant adds the row of its merged model before query learning (``"<name>: merged, before query learning"``).

    ``oracle``: add the pooled-data oracle row (:mod:`~qkt_flower.experiments.headroom`).
    """
    exp = prepare(load_config(overrides), device)

    def row(method: str, model) -> dict:
        r = exp.evaluate(model)
        return {"method": method, **{k: 100 * r[k] for k in ACC}}

    rows = [row("local model", exp.models[exp.client])]
    for name, extra in variants.items():
        cfg = load_config([*overrides, *extra])
        if cfg.method.student.kind == "merge":  # how the client's own classes survive the merge itself
            start = initial_student(exp.models[exp.client], exp.experts(cfg)[0], cfg.method.student)
            rows.append(row(f"{name}: merged, before query learning", start))
        model, info = exp.learn(cfg)
        cost = inference_cost(model, exp.models[exp.client], tuple(exp.fed.train.input_shape))
        experts = 0 if info["selection"] is None else len(info["selection"].relevant)
        rows.append({**row(name, model), "experts": experts, "flops_x": cost["flops"], **mask_columns(exp, cfg, info)})
    if baselines is not None:
        rows += baseline_rows(exp, row, baselines)
    if oracle:
        rows.append(row(headroom.ORACLE, headroom.oracle_model(exp.cfg, exp.fed, exp.models[exp.client], exp.device)))
    for r in rows:
        r["local_delta"] = r["local_acc"] - rows[0]["local_acc"]
    return rows


def add_cell_arguments(parser) -> None:
    """The cells' arguments of a grid command line — splits, seeds, queries, overrides for every cell."""
    parser.add_argument("--partitions", nargs="+", default=["pathological", "dirichlet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--queries", nargs="+", default=["[0]", "[2]", "[4]", "[6]"])
    parser.add_argument("--extra", nargs="*", default=["dataset.train_per_class=300", "dataset.test_per_class=200"],
                        help="Hydra overrides for every cell (default: 300 / 200 images per class)")  # fmt: skip


def cell_overrides(part: str, seed: int, query: str, cache: Path, extra: list[str]) -> list[str]:
    """One cell's Hydra overrides; local models cached under ``cache``."""
    return [
        f"partition={part}",
        f"seed={seed}",
        f"query.classes={query}",
        "progress=false",
        f"local.cache_dir={cache}",
        *extra,
    ]


def conf_fingerprint(conf_dir: Path = CONF_DIR) -> str:
    """Hash of every YAML file under ``conf/`` (names and contents).

    Every cell composes its config from ``conf/`` when it starts, so a default edited while a grid runs silently
    splits its rows between two sets of defaults: the grid compares this after every cell and stops when it changed.
    """
    h = hashlib.sha256()
    for path in sorted(conf_dir.rglob("*.yaml")):
        h.update(path.relative_to(conf_dir).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]
