import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recexplainer import artifacts, cli
from recexplainer.cli import run
from recexplainer.data.dataset import SequentialData
from recexplainer.pipeline import stage_folder
from recexplainer.recommender import load_recommender, pad_left
from recexplainer.recommender.metrics import target_rank

REQUIRED_METRICS = [f"{s}/{m}@{k}" for s in ("valid", "test") for m in ("hr", "ndcg") for k in (5, 10, 20)]


@pytest.mark.slow
def test_end_to_end_data_and_recommender(make_cfg):
    cfg = make_cfg()
    folder = run(cfg)
    data_folder = stage_folder(cfg, "data")
    assert folder.parent.name == "recommender" and data_folder.parent.name == "data"
    for f in (folder, data_folder):
        assert artifacts.is_complete(f) and (f / "config.yaml").is_file() and (f / "key.json").is_file()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    for key in REQUIRED_METRICS + ["protocol/full_ranking", "protocol/exclude_history", "train/best_epoch"]:
        assert key in metrics
    assert metrics["test/hr@20"] >= metrics["test/hr@10"] >= metrics["test/hr@5"]

    # the exported model reproduces the reported test metric
    model = load_recommender(folder)
    data = SequentialData.load(data_folder)
    users = list(range(data.n_users))
    seq = pad_left([data.history(u, "test") for u in users], model.max_len)
    exclude = pad_left([data.history(u, "test") for u in users])
    with torch.no_grad():
        scores = model.score(seq, torch.tensor(users), exclude=exclude)
    rank = target_rank(scores, torch.tensor([data.target(u, "test") for u in users]))
    assert (rank < 10).float().mean().item() == pytest.approx(metrics["test/hr@10"], abs=1e-6)


@pytest.mark.slow
def test_second_run_reuses_and_force_recomputes(make_cfg, monkeypatch):
    cfg = make_cfg()
    folder = run(cfg)
    stamp = (folder / "metrics.json").stat().st_mtime_ns

    import recexplainer.recommender.stage as rec_stage

    def boom(*args, **kwargs):
        raise AssertionError("a complete stage must be reused, not recomputed")

    monkeypatch.setattr(rec_stage, "run", boom)
    assert run(cfg) == folder and (folder / "metrics.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    cfg.force = True
    assert run(cfg) == folder and (folder / "metrics.json").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_recommender_sweep_shares_the_data_stage(make_cfg):
    a = make_cfg("recommender.hidden_size=8", "stage=data")
    b = make_cfg("recommender.hidden_size=12", "recommender.train.lr=0.01", "stage=data")
    assert stage_folder(a, "data") == stage_folder(b, "data")
    assert stage_folder(a, "recommender") != stage_folder(b, "recommender")
    c = make_cfg("dataset.preprocess.user_core=5")
    assert stage_folder(c, "data") != stage_folder(a, "data")
    d = make_cfg(
        "trainer.accelerator=gpu", "logger=wandb", "num_threads=2"
    )  # hardware does not change results
    assert stage_folder(d, "recommender") == stage_folder(make_cfg(), "recommender")


@pytest.mark.slow
def test_same_seed_gives_same_metrics(make_cfg):
    cfg = make_cfg()
    first = json.loads((run(cfg) / "metrics.json").read_text())
    cfg.force = True
    second = json.loads((run(cfg) / "metrics.json").read_text())
    for key in REQUIRED_METRICS:
        assert first[key] == second[key], key


def _same_results(folder_a, folder_b) -> None:
    """Bit-identical final weights and metrics (timings aside) of two recommender folders."""
    a = torch.load(folder_a / "checkpoints" / "best.ckpt", weights_only=True)
    b = torch.load(folder_b / "checkpoints" / "best.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    metrics = [json.loads((f / "metrics.json").read_text()) for f in (folder_a, folder_b)]
    for key, value in metrics[0].items():
        if key.startswith(("valid/", "test/", "train/best", "model/")):
            assert metrics[1][key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [1, 3])
def test_killed_training_resumes_bit_identically(make_cfg, monkeypatch, tmp_path, kill_epoch):
    """Dropout on, killed after an epoch's checkpoint: the resumed run ends with the uninterrupted run's
    weights and metrics (random states and the shuffle generator are checkpointed)."""
    overrides = ("recommender.train.max_epochs=5", "recommender.dropout=0.3")
    reference = run(make_cfg(*overrides, f"paths.artifacts={tmp_path / 'reference'}"))
    cfg = make_cfg(*overrides)
    from recexplainer.training import EpochTimer

    original = EpochTimer.on_train_epoch_end

    def die(self, trainer, module):
        original(self, trainer, module)
        if trainer.current_epoch == kill_epoch:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(EpochTimer, "on_train_epoch_end", die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    folder = stage_folder(cfg, "recommender")
    assert not artifacts.is_complete(folder) and (folder / "checkpoints" / "last.ckpt").is_file()
    saved_epoch = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert saved_epoch in (kill_epoch - 1, kill_epoch)
    monkeypatch.undo()
    assert run(cfg) == folder and artifacts.is_complete(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train/epochs_run"] == 5 - (saved_epoch + 1)  # only the epochs after the checkpoint
    _same_results(reference, folder)


def test_mf_through_the_same_interface(make_cfg):
    folder = run(make_cfg("recommender=mf"))
    model = load_recommender(folder)
    assert model.name == "mf"
    assert json.loads((folder / "metrics.json").read_text())["test/ndcg@10"] > 0


@pytest.mark.slow
def test_bce_loss_trains(make_cfg):
    folder = run(make_cfg("recommender.loss=bce", "recommender.n_negatives=4"))
    assert json.loads((folder / "metrics.json").read_text())["test/hr@20"] > 0


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("recexplainer")
    return subprocess.run(
        [
            str(exe),
            *[a for a in args if a.startswith("-")],
            f"paths.artifacts={tmp_path}/artifacts",
            *([] if any(a.startswith("stage=") for a in args) else ["stage=recommender"]),
            *[a for a in args if not a.startswith("-")],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_reports_config_typos_with_the_key(tmp_path):
    proc = _cli(tmp_path, "recommender.hiden_size=3")
    assert proc.returncode != 0 and "hiden_size" in proc.stderr
    proc = _cli(tmp_path, "stage=dta", "dataset=synthetic")
    assert proc.returncode == 2 and "stage='dta'" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_multirun_shares_data(tmp_path):
    proc = _cli(
        tmp_path,
        "-m",
        "dataset=synthetic",
        "recommender.hidden_size=8,16",
        "recommender.n_heads=1",
        "recommender.n_layers=1",
        "recommender.max_len=8",
        "recommender.train.max_epochs=1",
        "trainer.enable_progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "artifacts"
    assert len(list((root / "data").glob("*/_COMPLETE"))) == 1
    assert len(list((root / "recommender").glob("*/_COMPLETE"))) == 2
    assert "stage data: reusing" in proc.stderr + proc.stdout
    # the sweep's own report: training curves of its two recommenders
    sweeps = list((root / "multirun").glob("*/sweep_summary.json"))
    assert len(sweeps) == 1
    assert (sweeps[0].parent / "report" / "training_recommender.png").stat().st_size > 1000


@pytest.mark.slow
def test_wandb_logger_runs_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    folder = run(make_cfg("logger=wandb", "recommender.train.max_epochs=1"))
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert list(folder.glob("logs/version_*/metrics.csv"))  # the CSV log (report curves) is kept as well


@pytest.mark.slow
def test_cli_reports_bad_data_without_a_traceback(tmp_path):
    (tmp_path / "mine.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tsoon\n")
    proc = _cli(
        tmp_path,
        "stage=data",
        "dataset=recbole_atomic",
        "dataset.name=mine",
        f"dataset.path={tmp_path}",
        "dataset.rating_field=null",
    )
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2 and "mine.inter:2: field 'timestamp' must be a number" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_multirun_survives_a_failed_point_and_reports_it(tmp_path):
    proc = _cli(
        tmp_path,
        "-m",
        "dataset=synthetic",
        "recommender.n_heads=1,3",  # hidden 8 is not divisible by 3: that point fails validation
        "recommender.hidden_size=8",
        "recommender.n_layers=1",
        "recommender.max_len=8",
        "recommender.train.max_epochs=1",
        "trainer.enable_progress_bar=false",
    )
    out = proc.stderr + proc.stdout
    assert proc.returncode == 1, out[-2000:]
    assert len(list((tmp_path / "artifacts" / "recommender").glob("*/_COMPLETE"))) == 1  # the good point ran
    failed = list((tmp_path / "artifacts" / "multirun").glob(f"*/*/{cli.FAILED_FILE}"))
    assert len(failed) == 1
    record = json.loads(failed[0].read_text())
    assert "recommender.n_heads=3" in record["overrides"] and "ConfigError" in record["error"]
    summary = json.loads((failed[0].parent.parent / "sweep_summary.json").read_text())
    assert summary["points"] == 2 and len(summary["failed"]) == 1
    assert "1 of 2 sweep points failed" in out


def test_process_rank_reads_the_launchers_environment(monkeypatch):
    from recexplainer.runtime import process_rank

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert process_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's subprocess launcher
    assert process_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # first process of the second node
    assert process_rank() != 0
    monkeypatch.setenv("RANK", "0")  # torchrun's global rank wins
    assert process_rank() == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert process_rank() == 3


@pytest.mark.slow
def test_a_worker_rank_reuses_waits_for_and_never_writes_rank_0s_stage_folders(make_cfg, monkeypatch):
    from recexplainer import pipeline

    cfg = make_cfg("stage=data")
    folder = run(cfg)  # rank 0 built it
    monkeypatch.setenv("LOCAL_RANK", "1")
    before = sorted(p.name for p in folder.iterdir())
    assert pipeline.run_stage(cfg, "data") == folder
    assert sorted(p.name for p in folder.iterdir()) == before
    other = make_cfg("stage=data", "dataset.n_users=77")  # never built: a worker only waits for rank 0
    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 0.3)
    with pytest.raises(TimeoutError, match="rank 0"):
        pipeline.run_stage(other, "data")
    assert not artifacts.is_complete(pipeline.stage_folder(other, "data"))


def test_shard_sampler_ranks_every_user_exactly_once_across_processes():
    from recexplainer.recommender.datamodule import ShardSampler

    data = list(range(10))
    shards = [list(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == data  # no padding repeats, nothing lost
    assert [len(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)] == [4, 3, 3]
    assert ShardSampler.for_current_process(data) is None  # no process group: the whole set
