"""The interference grid end to end on colour images: image-folder loader + ResNet + every method kind.

The images are random PNGs written in the exact ``root/{train,test}/<class>/*.png`` layout (accuracies are
meaningless here); what is checked is that the grid's defaults run on 3-channel data with the ResNet, that
every method kind gives a row (a composed student and feature distillation on the ResNet included, and the
pooled-data oracle), that the claim check is printed, and that the baselines are cached per cell.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from qkt_flower.experiments.grid import CONF_DIR, conf_fingerprint
from qkt_flower.experiments.headroom import ORACLE
from qkt_flower.experiments.tables import ACC, claim_conditions

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script(name: str, *args: str) -> str:
    """Run ``scripts/<name>.py`` as a user would; its stdout (a failure shows its stderr)."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


CLASSES = [f"class{c}" for c in range(10)]


def _image_folder(root: Path, train: int, test: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_grid_runs_on_an_image_folder_with_the_resnet(tmp_path):
    _image_folder(tmp_path / "data", train=30, test=4)
    variants = ["QKT (default)", "QKT, no augmentation", "QKT, no calibration", "QKT, expert composition",
                "QKT, feature distillation", "QKT, weight merge", "balanced-CE control"]  # fmt: skip
    extra = ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16", "model=resnet10",
             "local.shared_init=true", "local.epochs=1", "method.phases.0.epochs=2", "query.min_local_count=5",
             "strategy.probe.n=32"]  # fmt: skip
    argv = ["--partitions", "pathological", "--seeds", "0", "--queries", "[0]", "--rounds", "2", "--oracle",
            "--variants", *variants, "--out", str(tmp_path / "grid"), "--extra", *extra]  # fmt: skip
    printed = script("query_grid", *argv)
    result = json.loads((tmp_path / "grid" / "grid.json").read_text())
    methods = [r["method"] for r in result["table"]]
    merge_start = "QKT, weight merge: merged, before query learning"  # the merge itself, before L_keep restores
    expected = ["local model", *variants[:5], merge_start, *variants[5:], "ensemble (all models)", "vanilla KD",
                "FedDF fusion", "FedAvg (1 rd)", "FedAvg (1 rd) + FT", "FedAvg (2 rd)", "FedAvg (2 rd) + FT",
                ORACLE]  # fmt: skip
    assert methods == expected and not result["skipped"]
    for row in result["rows"]:
        assert all(0.0 <= row[k] <= 100.0 for k in ACC)
    variant = {r["method"]: r for r in result["rows"] if r["method"] in variants}
    composed = variant["QKT, expert composition"]  # the client's extractor and each expert's: ≈ (1 + K)× FLOPs
    assert composed["experts"] >= 1 and abs(composed["flops_x"] - (1 + composed["experts"])) < 0.05
    assert variant["QKT (default)"]["flops_x"] == 1.0 and variant["balanced-CE control"]["experts"] == 0
    streamed = [json.loads(line) for line in (tmp_path / "grid" / "rows.jsonl").read_text().splitlines()]
    assert streamed == result["rows"]  # written cell by cell, so a stopped grid keeps its finished cells
    script("query_grid", "--from-rows", "--out", str(tmp_path / "grid"))  # tables rebuilt from them, nothing run
    assert json.loads((tmp_path / "grid" / "grid.json").read_text())["table"] == result["table"]
    assert "Claim check, QKT (default):" in printed and printed.count("PASS") + printed.count("FAIL") == 3
    cached = sorted(p.name for p in (tmp_path / "grid" / "cache").iterdir() if p.is_file())
    assert [p.split("-")[0] for p in cached] == ["baselines", "fedavg"]

    # a second grid with another variant re-uses the cached baselines: identical rows
    script("query_grid", *argv[: argv.index("--variants") + 1], "QKT Light", *argv[argv.index("--out") :])
    again = json.loads((tmp_path / "grid" / "grid.json").read_text())
    first = {r["method"]: r for r in result["rows"]}
    for row in again["rows"]:
        if row["method"] in expected[len(variants) + 2 : -1]:
            assert row == first[row["method"]]

    # the trade-off figure is drawn from the grid's own grid.json
    script("plot", str(tmp_path / "grid"))
    assert (tmp_path / "grid" / "trade_off.png").stat().st_size > 10_000

    # the claim table across grids: one column per (label, query size, split), the three conditions per column
    script("claim_table", "A=" + str(tmp_path / "grid"), "B=" + str(tmp_path / "grid"), "--qkt", "QKT Light",
           "--out", str(tmp_path / "claim"))  # fmt: skip
    claim = json.loads((tmp_path / "claim" / "claim.json").read_text())
    assert list(claim["passed"]) == ["A 1-cl path.", "B 1-cl path."]
    conditions = claim_conditions(again["table"], 20.0, "QKT Light")  # the last grid.json's QKT row
    assert claim["passed"]["A 1-cl path."] == [ok for ok, _, _ in conditions]
    text = (tmp_path / "claim" / "claim.md").read_text()
    assert "| QKT Light |" in text and text.count("PASS") + text.count("FAIL") == 6


def test_conf_fingerprint_follows_every_yaml_under_conf(tmp_path):
    """The grid stops when conf/ changes mid-run; this is the fingerprint it compares after every cell."""
    (tmp_path / "strategy").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "strategy" / "qkt.yaml").write_text("augment_local: 1\n")
    first = conf_fingerprint(tmp_path)
    assert conf_fingerprint(tmp_path) == first
    (tmp_path / "strategy" / "qkt.yaml").write_text("augment_local: 0\n")  # a default edited in a group
    edited = conf_fingerprint(tmp_path)
    assert edited != first
    (tmp_path / "strategy" / "qkt.yaml").rename(tmp_path / "strategy" / "other.yaml")  # same text, other option
    assert conf_fingerprint(tmp_path) not in (first, edited)
    assert conf_fingerprint() == conf_fingerprint(CONF_DIR)  # the repo's conf/


def test_unknown_variant_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "query_grid.py"), "--variants", "QKT, no such thing",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_federated_globals_are_shared_by_grids_over_the_local_models_epochs_or_init():
    from qkt_flower.config import load_config
    from qkt_flower.experiments.grid import federated_inputs

    base = federated_inputs(load_config([]))
    assert federated_inputs(load_config(["local.epochs=10", "local.shared_init=true"])) == base
    for other in (["seed=1"], ["local.lr=0.01"], ["local.batch_size=32"], ["partition=dirichlet"], ["model=resnet10"]):
        assert federated_inputs(load_config(other)) != base, other
