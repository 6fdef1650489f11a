"""Hardware and precision per stage: the device for stages outside a Trainer, the strategy, the precision."""

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from recexplainer import runtime
from recexplainer.runtime import autocast, inference_device, stage_precision
from recexplainer.training import build_trainer


def test_inference_device_follows_the_trainer_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}})
    # bf16 autocast on the CPU too, as the Trainer's bf16-mixed does there (trainer=cpu_bf16)
    assert inference_device(cpu, "explain") == (torch.device("cpu"), torch.bfloat16)
    cpu32 = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    assert inference_device(cpu32, "explain") == (torch.device("cpu"), None)
    auto = OmegaConf.create({"trainer": {"accelerator": "auto", "precision": "bf16-mixed"}})
    assert inference_device(auto, "explain") == (torch.device("cpu"), torch.bfloat16)
    gpu = OmegaConf.create({"trainer": {"accelerator": "gpu", "precision": "bf16-mixed"}})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        inference_device(gpu, "explain")


def test_inference_device_picks_the_gpu_and_bf16_when_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = OmegaConf.create({"trainer": {"accelerator": "gpu", "precision": "bf16-mixed"}})
    assert inference_device(gpu, "explain") == (torch.device("cuda", 1), torch.bfloat16)
    fp32 = OmegaConf.create({"trainer": {"accelerator": "gpu", "precision": "32-true"}})
    assert inference_device(fp32, "explain") == (torch.device("cuda", 1), None)


def test_autocast_is_a_no_op_without_a_dtype():
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2"])
def test_unsharded_stages_run_sharding_strategies_as_ddp(make_cfg, tmp_path, strategy):
    cfg = make_cfg(f"trainer.strategy={strategy}", "trainer.devices=1")
    trainer = build_trainer(cfg, tmp_path, "recommender", 1, [], None, shard=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    # the aligner keeps the configured strategy (here it cannot start without a GPU: Lightning says so)
    with pytest.raises(Exception, match="(?i)(fsdp.*requires a gpu|deepspeed.*installed)"):
        build_trainer(cfg, tmp_path, "aligner", 1, [], 1.0, shard=True)


@pytest.mark.slow
def test_cpu_bf16_keeps_the_fp32_recommender_and_its_downstream_keys(make_cfg):
    """trainer=cpu_bf16: bf16 for the LLM stages, the recommender (and so labels and alignment data) stays
    the fp32 one of trainer=cpu: same cached folders up to the alignment data, new ones from the aligner."""
    from recexplainer.pipeline import stage_folder

    fp32, bf16 = make_cfg("trainer=cpu", "trainer.precision=32-true"), make_cfg("trainer=cpu_bf16")
    assert bf16.trainer.precision == "bf16-mixed" and bf16.trainer.accelerator == "cpu"
    assert stage_precision(bf16, "recommender") == "32-true"
    assert stage_precision(bf16, "aligner") == "bf16-mixed"
    assert stage_precision(fp32, "recommender") == "32-true"
    for stage in ("data", "recommender", "alignment_data"):
        assert stage_folder(fp32, stage) == stage_folder(bf16, stage)
    for stage in ("aligner", "evaluate"):
        assert stage_folder(fp32, stage) != stage_folder(bf16, stage)
    # without recommender_precision every stage follows trainer.precision (the GPU presets)
    both = make_cfg("trainer=cpu", "trainer.precision=bf16-mixed", "trainer.recommender_precision=null")
    assert stage_precision(both, "recommender") == "bf16-mixed"
    assert stage_folder(both, "recommender") != stage_folder(fp32, "recommender")


@pytest.mark.slow
def test_the_recommender_trainer_runs_at_its_own_precision(make_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_PRECISION_ADVICE_GIVEN", set())
    cfg = make_cfg("trainer=cpu_bf16")
    with caplog.at_level("INFO", logger="recexplainer.runtime"):
        trainer = build_trainer(cfg, tmp_path, "recommender", 1, [], None, shard=False)
    assert trainer.precision == "32-true"
    # the fp32 recommender is what cpu_bf16 asks for: no advice to switch to bf16
    assert not [r for r in caplog.records if "native bf16" in r.getMessage()]
    assert build_trainer(cfg, tmp_path, "aligner", 1, [], None).precision == "bf16-mixed"
    # trainer=cpu with evaluation.precision=bf16-true: the evaluation's bf16 is what the advice would suggest
    caplog.clear()
    with caplog.at_level("INFO", logger="recexplainer.runtime"):
        evaluation = build_trainer(
            make_cfg("trainer=cpu", "evaluation.precision=bf16-true"),
            tmp_path,
            "evaluate",
            1,
            [],
            None,
            shard=False,
        )
    assert evaluation.precision == "bf16-true"
    assert not [r for r in caplog.records if "native bf16" in r.getMessage()]


@pytest.mark.parametrize(
    ("native", "precision", "level", "says"),
    [
        (False, "bf16-mixed", "WARNING", "slower than fp32"),
        (True, "32-true", "INFO", "evaluation.precision=bf16-true"),
        (True, "bf16-mixed", None, None),
        (False, "32-true", None, None),
    ],
)
def test_cpu_precision_advice_fits_the_cpu(monkeypatch, caplog, native, precision, level, says):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(runtime, "_PRECISION_ADVICE_GIVEN", set())
    cfg = OmegaConf.create({"accelerator": "cpu", "precision": precision})
    with caplog.at_level("INFO", logger="recexplainer.runtime"):
        runtime.advise_cpu_precision(cfg, precision)
        runtime.advise_cpu_precision(cfg, precision)  # once per process, not once per stage
    records = [r for r in caplog.records if r.name == "recexplainer.runtime"]
    if level is None:
        assert records == []
    else:
        assert len(records) == 1 and records[0].levelname == level and says in records[0].getMessage()
    gpu = OmegaConf.create({"accelerator": "gpu", "precision": precision})
    caplog.clear()
    runtime.advise_cpu_precision(gpu, precision)
    assert [r for r in caplog.records if r.name == "recexplainer.runtime"] == []


def test_cpu_has_bf16_is_a_bool_and_survives_a_broken_probe(monkeypatch):
    assert isinstance(runtime.cpu_has_bf16(), bool)

    def broken():
        raise RuntimeError("probe changed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    assert runtime.cpu_has_bf16() is False


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_the_default_cpu_precision_follows_the_cpus_bf16_support(monkeypatch, native):
    """trainer=cpu: bf16-mixed where the CPU multiplies bf16 natively, fp32 where bf16 would be emulated;
    the recommender stays fp32 on both, so its cached folder (and the alignment data) is the same."""
    from recexplainer.pipeline import stage_folder

    from .helpers import compose_config

    monkeypatch.setattr("recexplainer.runtime.cpu_has_bf16", lambda: native)
    cfg = compose_config(["stage=recommender"], pin_precision=False)
    assert cfg.trainer.precision == ("bf16-mixed" if native else "32-true")
    assert stage_precision(cfg, "recommender") == "32-true"
    resolved = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert resolved["precision"] == cfg.trainer.precision  # what cache keys and config.yaml hold
    fp32 = compose_config(["stage=recommender", "trainer.precision=32-true"])
    assert stage_folder(cfg, "recommender") == stage_folder(fp32, "recommender")


def test_one_rule_gives_every_stage_its_precision(make_cfg, monkeypatch):
    """evaluation.precision sets the LLM's numerics at inference, in the evaluation and the explanations alike;
    the recommender has its own override; the aligner follows trainer.precision."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_cfg("trainer=cpu", "trainer.precision=32-true", "evaluation.precision=bf16-mixed")
    assert [stage_precision(cfg, s) for s in ("recommender", "aligner", "evaluate", "explain")] == [
        "32-true",
        "32-true",
        "bf16-mixed",
        "bf16-mixed",
    ]
    assert inference_device(cfg, "explain") == (torch.device("cpu"), torch.bfloat16)
    assert inference_device(cfg, "aligner") == (torch.device("cpu"), None)
