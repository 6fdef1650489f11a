"""Hardware selection helpers: the device for stages outside a Trainer, the strategy per stage."""

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from recexplainer.training import autocast, build_trainer, inference_device


def test_inference_device_follows_the_trainer_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"})
    assert inference_device(cpu) == (torch.device("cpu"), None)  # bf16 on a CPU is never chosen
    auto = OmegaConf.create({"accelerator": "auto", "precision": "bf16-mixed"})
    assert inference_device(auto) == (torch.device("cpu"), None)
    gpu = OmegaConf.create({"accelerator": "gpu", "precision": "bf16-mixed"})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        inference_device(gpu)


def test_inference_device_picks_the_gpu_and_bf16_when_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = OmegaConf.create({"accelerator": "gpu", "precision": "bf16-mixed"})
    assert inference_device(gpu) == (torch.device("cuda", 1), torch.bfloat16)
    fp32 = OmegaConf.create({"accelerator": "gpu", "precision": "32-true"})
    assert inference_device(fp32) == (torch.device("cuda", 1), None)


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
