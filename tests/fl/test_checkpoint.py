"""Resume trusts nothing it did not write for this very run: a checkpoint of another seed, of other code, or a
corrupt one is refused on one line, before any work (also from the ``qkt-flower`` command line)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qkt_flower.config import compose_config
from qkt_flower.errors import ConfigError
from qkt_flower.fl import checkpoint
from qkt_flower.fl.checkpoint import Checkpoint, check_resumable, config_hash


def _yaml(*overrides: str) -> str:
    return OmegaConf.to_yaml(compose_config(list(overrides)), resolve=True)


def test_a_run_resumes_its_own_steps_and_a_fresh_run_clears_them(tmp_path):
    cfg = _yaml("seed=0")
    Checkpoint(tmp_path, cfg, resume=False).put("probe", {"1": [0.5]})
    assert Checkpoint(tmp_path, cfg, resume=True).get("probe") == {"1": [0.5]}
    assert Checkpoint(tmp_path, _yaml("seed=0", "progress=false", "resume=true"), resume=True).get("probe")
    assert Checkpoint(tmp_path, cfg, resume=False).get("probe") is None  # not resuming: starts afresh
    assert not (tmp_path / config_hash(cfg) / "steps.json").exists()


def test_another_seeds_checkpoint_copied_in_is_refused(tmp_path):
    seed0, seed1 = _yaml("seed=0"), _yaml("seed=1")
    Checkpoint(tmp_path, seed1, resume=False).put("results", {"after": {"query_acc": 0.9}})
    (tmp_path / config_hash(seed0)).mkdir()
    shutil.copy(tmp_path / config_hash(seed1) / "steps.json", tmp_path / config_hash(seed0) / "steps.json")
    with pytest.raises(ConfigError, match=r"belongs to another config \(seed: 1 there, 0 here") as err:
        Checkpoint(tmp_path, seed0, resume=True)
    assert err.value.key == "resume"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "cannot be read"),
        ('{"probe": {"1": [0.5]}}', "is not a checkpoint"),
        (b"\xff\xfe", "cannot be read"),
    ],
)
def test_a_corrupt_or_foreign_steps_file_is_refused(tmp_path, content, why):
    cfg = _yaml()
    folder = tmp_path / config_hash(cfg)
    folder.mkdir()
    (folder / "steps.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=why):
        check_resumable(tmp_path, cfg, resume=True)
    check_resumable(tmp_path, cfg, resume=False)  # not resuming: the file will be cleared, nothing to refuse


def test_other_code_has_another_folder_and_its_file_is_refused(tmp_path, monkeypatch):
    cfg = _yaml()
    Checkpoint(tmp_path, cfg, resume=False).put("probe", {})
    path = tmp_path / config_hash(cfg) / "steps.json"
    before = config_hash(cfg)
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: "another-version")
    assert config_hash(cfg) != before  # a code change resumes nothing stale ...
    (tmp_path / config_hash(cfg)).mkdir()
    shutil.copy(path, tmp_path / config_hash(cfg) / "steps.json")  # ... even when its file is copied over
    with pytest.raises(ConfigError, match="another version of the code"):
        Checkpoint(tmp_path, cfg, resume=True)


def test_the_simulation_command_refuses_a_corrupt_checkpoint_on_one_line(tmp_path):
    overrides = [f"checkpoint_dir={tmp_path / 'ckpt'}", "resume=true", f"hydra.run.dir={tmp_path / 'out'}"]
    folder = tmp_path / "ckpt" / config_hash(_yaml(*overrides[:2]))
    folder.mkdir(parents=True)
    (folder / "steps.json").write_text(json.dumps({"config": {}, "code": "x", "steps": {}})[:-3])
    done = subprocess.run([sys.executable, "-m", "qkt_flower.fl.simulation", *overrides], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: resume=True"), done.stderr[-2000:]
    assert "cannot be read (JSONDecodeError)" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_a_run_killed_after_the_probe_resumes_with_its_probe_scores_and_reloaded_models(tmp_path):
    """A real simulation, then its checkpoint cut back to what a run killed after the probe leaves (training replies
    and probe scores): the resumed run retrains no model (every node reloads its own from the checkpoint's
    ``local_models/``), sends no probe, and ends with the numbers of the uninterrupted run."""
    from qkt_flower.config import to_config
    from qkt_flower.fl.simulation import simulate
    from qkt_flower.results import load_results

    overrides = ["dataset.train_per_class=100", "dataset.test_per_class=50", "local.epochs=1", "progress=false",
                 "partition.num_clients=4", "query.classes=[1]", "control=false",
                 "strategy.probe.with_training=false", f"checkpoint_dir={tmp_path / 'ckpt'}"]  # fmt: skip
    simulate(to_config(compose_config(overrides)), _yaml(*overrides), tmp_path / "first")
    first = load_results(tmp_path / "first")
    assert first["local_training"]["samples"] > 0
    steps_file = tmp_path / "ckpt" / config_hash(_yaml(*overrides)) / "steps.json"
    saved = json.loads(steps_file.read_text())
    saved["steps"] = {k: saved["steps"][k] for k in ("train", "probe")}  # killed while fetching the experts
    steps_file.write_text(json.dumps(saved))
    again = [*overrides, "resume=true"]
    simulate(to_config(compose_config(again)), _yaml(*again), tmp_path / "resumed")
    resumed = load_results(tmp_path / "resumed")
    assert resumed["resumed"] == ["probe"]
    assert resumed["local_training"]["samples"] == 0  # every local model reloaded, none retrained
    assert resumed["probe_cost"]["probe_messages"] == 0 and "probe" not in resumed["bytes"]["sent"]
    assert resumed["probe"] == first["probe"] and resumed["experts"] == first["experts"]
    timeless = lambda metrics: {k: v for k, v in metrics.items() if not k.startswith("seconds.")}  # noqa: E731
    assert timeless(resumed["metrics"]) == timeless(first["metrics"])
