"""The aligner stage end to end on synthetic data with a tiny random Llama, and what it learns."""

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from recexplainer import artifacts
from recexplainer.aligner import setup
from recexplainer.aligner.data import AlignmentDataset
from recexplainer.aligner.model import RecExplainerLM
from recexplainer.aligner.module import AlignerModule, warmup_decay
from recexplainer.alignment_data.io import read_examples
from recexplainer.cli import run
from recexplainer.pipeline import stage_folder

from .helpers import ALIGN, D_REC, ITEM, USER, tiny_lm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from .helpers import TINY, TINY_SASREC, compose_config

    root = tmp_path_factory.mktemp("aligner")
    cfg = compose_config([f"paths.artifacts={root}", *TINY, *TINY_SASREC, *ALIGN])
    return cfg, run(cfg)


@pytest.mark.slow
def test_aligner_stage_writes_adapter_projectors_and_metrics(trained):
    cfg, folder = trained
    assert artifacts.is_complete(folder)
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "projectors.safetensors",
        "aligner.json",
        "tokenizer/tokenizer_config.json",
    ):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["aligner/optimizer_steps"] == 3 and metrics["aligner/train_examples"] == 24
    assert metrics["train/loss"] > 0 and metrics["train/tokens_per_s"] > 0
    assert not list(folder.glob("**/*.bin")) and not list(folder.glob("**/*.pt"))  # safetensors only


def valid_batch(cfg, model, tokenizer, formatter, task: str, limit: int) -> dict:
    """A collated batch of validation examples of one task, encoded for ``model``."""
    ds = AlignmentDataset.for_model(
        stage_folder(cfg, "alignment_data"), "valid", model, tokenizer, formatter, tasks=[task], limit=limit
    )
    return ds.batch(tokenizer.pad_token_id)


@pytest.mark.slow
def test_reloaded_aligner_is_deterministic_and_trained(trained):
    cfg, folder = trained
    model, tokenizer, formatter = setup.load(folder)
    batch = valid_batch(cfg, model, tokenizer, formatter, "interest", 4)
    with torch.no_grad():
        a = model(**batch).logits
        b = setup.load(folder)[0](**batch).logits
    assert torch.equal(a, b)
    fresh, _, _ = setup.build(cfg, model.user_projector[0].in_features)
    trained_w = model.user_projector[0].weight
    assert not torch.allclose(fresh.user_projector[0].weight, trained_w)  # training moved the projector


@pytest.mark.slow
def test_encoded_prompts_use_the_chat_template_and_mask_the_prompt(trained):
    cfg, folder = trained
    model, tokenizer, formatter = setup.load(folder)
    data_folder = stage_folder(cfg, "alignment_data")
    rows = read_examples(data_folder, "train", ["ranking"])[:3]
    ds = AlignmentDataset.for_model(
        data_folder,
        "train",
        model,
        tokenizer,
        formatter,
        2048,
        tasks=["ranking"],
    )
    enc = ds.examples[0]
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>") and "<|im_start|>assistant" in text
    target = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    row = (
        next(r for r in rows if r["id"] == enc.example_id)
        if enc.example_id in {r["id"] for r in rows}
        else None
    )
    decoded = tokenizer.decode(target)
    assert decoded.endswith(tokenizer.eos_token)
    if row is not None:
        assert decoded.startswith(row["target"])
    assert enc.input_ids.count(model.item_token_id) == 5 and enc.input_ids.count(model.user_token_id) == 1


@pytest.mark.slow
def test_killed_aligner_resumes_mid_epoch_bit_identically(tmp_path, monkeypatch):
    """Killed after a mid-epoch checkpoint (LoRA dropout on): the resumed run trains on the remaining
    batches only and ends with the uninterrupted run's weights, losses and smoothed loss."""
    from .helpers import TINY, TINY_SASREC, compose_config

    def config(root):
        return compose_config(
            [
                f"paths.artifacts={root}",
                *TINY,
                *TINY_SASREC,
                *ALIGN,
                "aligner.checkpoint_every_n_steps=1",
                "aligner.accumulate_grad_batches=1",
                "aligner.max_steps=-1",
                "aligner.lora_dropout=0.1",
            ]
        )

    original = AlignerModule.training_step
    seen: list[int] = []

    def record(self, batch, batch_idx):
        seen.append(int(batch["input_ids"].sum()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignerModule, "training_step", record)
    reference_folder = run(config(tmp_path / "reference"))
    reference, seen[:] = list(seen), []

    def die(self, batch, batch_idx):
        if self.global_step == 2:
            raise RuntimeError("simulated kill")
        return record(self, batch, batch_idx)

    monkeypatch.setattr(AlignerModule, "training_step", die)
    cfg = config(tmp_path / "killed")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    folder = stage_folder(cfg, "aligner")
    saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and not artifacts.is_complete(folder)
    assert all(
        "lora_" in k
        or "projector" in k
        or "placeholder" in k
        or any(
            name in k
            for name in ("item_query", "item_logit_scale", "projected_query", "projected_logit_scale")
        )
        for k in saved["state_dict"]
    )
    monkeypatch.setattr(AlignerModule, "training_step", record)
    run(cfg)
    assert artifacts.is_complete(folder)
    assert seen == reference  # the same batches in the same order, none twice
    metrics = [json.loads((f / "metrics.json").read_text()) for f in (reference_folder, folder)]
    assert metrics[1]["aligner/optimizer_steps"] == len(reference)
    for key in ("train/loss", "train/loss_smooth", "valid/loss"):
        assert metrics[1][key] == metrics[0][key], key
    weights = sorted(
        p.relative_to(folder) for p in folder.rglob("*.safetensors") if "checkpoints" not in p.parts
    )
    assert weights
    for path in weights:
        a, b = load_file(reference_folder / path), load_file(folder / path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path


@pytest.mark.slow
def test_the_projector_learns_to_read_the_user_vector():
    """yes/no decided by the sign of the user vector's first coordinate: only readable through the projector."""
    torch.manual_seed(0)
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, projector="mlp2x_gelu")
    for p in model.lm.parameters():
        p.requires_grad_(False)
    YES, NO = 10, 11
    vectors = torch.randn(64, D_REC)
    answers = torch.where(vectors[:, 0] > 0, YES, NO)
    ids = torch.tensor([[3, USER, 4, 5]] * 64)
    ids = torch.cat([ids, answers[:, None]], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = answers
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(500):
        loss = model(ids, user_vectors=vectors, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.randn(200, D_REC)
    test_ids = torch.tensor([[3, USER, 4, 5]] * 200)
    with torch.no_grad():
        logits = model(test_ids, user_vectors=test).logits[:, -1]
    predicted = torch.where(logits[:, YES] > logits[:, NO], 1, 0)
    accuracy = (predicted == (test[:, 0] > 0).long()).float().mean().item()
    assert accuracy > 0.8, accuracy  # chance: 0.5


def test_warmup_then_decay():
    values = [warmup_decay(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] >= 0.1 and values[50] < values[20]


@pytest.mark.slow
def test_merge_writes_a_standalone_model_with_the_same_outputs(trained, tmp_path):
    from recexplainer.aligner.merge import main

    cfg, folder = trained
    assert main([str(folder), str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "llm" / "model.safetensors").is_file() and (
        merged_dir / "projectors.safetensors"
    ).is_file()
    assert not (merged_dir / "adapter").exists()
    model, tokenizer, formatter = setup.load(folder)
    merged, _, _ = setup.load(merged_dir)
    batch = valid_batch(cfg, model, tokenizer, formatter, "ranking", 3)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, merged(**batch).logits, atol=1e-4)
    assert main([str(tmp_path), str(tmp_path / "x")]) == 2


def test_the_cap_keeps_every_example_of_the_uncapped_tasks_and_samples_the_others(trained, caplog):
    cfg, _ = trained
    folder = stage_folder(cfg, "alignment_data")
    model, tokenizer, formatter = setup.build(cfg, D_REC)
    tasks = ["retrieval", "interest", "explanation"]
    counts = {t: len(read_examples(folder, "train", [t])) for t in tasks}
    assert counts["explanation"] > 4

    def sample(limit, uncapped, seed=1):
        ds = AlignmentDataset.for_model(
            folder,
            "train",
            model,
            tokenizer,
            formatter,
            512,
            tasks=tasks,
            limit=limit,
            seed=seed,
            uncapped=uncapped,
        )
        return [e.example_id.split("/")[0] for e in ds.examples]

    limit = counts["explanation"] + 10
    got = sample(limit, ("explanation",))
    assert len(got) == limit and got.count("explanation") == counts["explanation"]
    assert sample(limit, ("explanation",)) == got  # seeded
    plain = sample(limit, ())
    assert len(plain) == limit and plain.count("explanation") < counts["explanation"]  # a plain sample
    assert "fill the cap" not in caplog.text
    # the uncapped tasks alone above the cap: a sample of them, never more than the cap, and a warning that the
    # other tasks are left out
    with caplog.at_level(logging.WARNING, logger="recexplainer.aligner.data"):
        assert sample(4, ("explanation",)) == ["explanation"] * 4
    assert (
        f"the {counts['explanation']} examples of the uncapped tasks ['explanation'] fill the cap of 4"
        in caplog.text
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["behavior", "intention", "hybrid"])
def test_every_mode_trains_through_the_same_path_and_overfits_a_tiny_set(tmp_path, mode):
    from .helpers import TINY, TINY_SASREC, compose_config

    cfg = compose_config(
        [
            f"paths.artifacts={tmp_path}",
            *TINY,
            *TINY_SASREC,
            *ALIGN,
            f"prompt={mode}",
            "stage=alignment_data",
            "aligner.lora_r=8",
        ]
    )
    data_folder = run(cfg)
    torch.manual_seed(0)
    model, tokenizer, formatter = setup.build(cfg, 16)
    ds = AlignmentDataset.for_model(
        data_folder,
        "train",
        model,
        tokenizer,
        formatter,
        512,
        tasks=["retrieval", "interest"],
        limit=6,
        seed=1,
    )
    batch = ds.batch(tokenizer.pad_token_id)
    assert (batch["user_vectors"].shape[0] > 0) == (mode != "behavior")
    with torch.no_grad():  # std 0.02 tied embeddings bound a 64-wide model's logits near 0: widen them
        model.lm.get_base_model().get_input_embeddings().weight.mul_(25)
    module = AlignerModule(model, lr=5e-3, projector_lr=5e-3, warmup_ratio=0.0, total_steps=60)
    opt = module.configure_optimizers()["optimizer"]
    model.train()
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.slow
def test_training_runs_in_train_mode_so_gradient_checkpointing_acts(tmp_path, monkeypatch):
    """from_pretrained returns the LM in eval mode and Lightning keeps module modes: without the module's
    on_fit_start the decoder layers stayed in eval mode, where Hugging Face skips gradient checkpointing
    (and any dropout of the base model; LoRA's own new modules were in training mode)."""
    from .helpers import TINY, TINY_SASREC, compose_config

    cfg = compose_config(
        [
            f"paths.artifacts={tmp_path}",
            *TINY,
            *TINY_SASREC,
            *ALIGN,
            "aligner.max_steps=1",
            "aligner.gradient_checkpointing=true",
        ]
    )
    original = AlignerModule.training_step
    modes: list[list[str]] = []

    def record(self, batch, batch_idx):
        modes.append([name for name, m in self.model.named_modules() if not m.training])
        return original(self, batch, batch_idx)

    load = setup.load_base_llm

    def load_in_eval_mode(*args, **kwargs):  # as from_pretrained returns the real models
        lm, tokenizer = load(*args, **kwargs)
        return lm.eval(), tokenizer

    monkeypatch.setattr(setup, "load_base_llm", load_in_eval_mode)
    monkeypatch.setattr(AlignerModule, "training_step", record)
    folder = run(cfg)
    assert modes and all(not in_eval for in_eval in modes), modes[0][:5]
    assert artifacts.is_complete(folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    "knob,precision", [("true", "bf16-mixed"), ("false", "bf16-mixed"), ("true", "32-true")]
)
def test_the_stage_trains_the_attention_in_fp32_only_when_asked_under_reduced_precision(
    tmp_path, monkeypatch, knob, precision
):
    from recexplainer.aligner.model import FP32_TRAINING_SDPA, base_model

    from .helpers import TINY, TINY_SASREC, compose_config

    cfg = compose_config(
        [
            f"paths.artifacts={tmp_path}",
            *TINY,
            *TINY_SASREC,
            *ALIGN,
            "aligner.max_steps=1",
            f"aligner.cpu_attention_fp32={knob}",
            f"trainer.precision={precision}",
        ]
    )
    original = AlignerModule.training_step
    seen: list[str] = []

    def record(self, batch, batch_idx):
        seen.append(base_model(self.model.lm).config._attn_implementation)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignerModule, "training_step", record)
    assert artifacts.is_complete(run(cfg))
    switched = knob == "true" and precision == "bf16-mixed"
    assert seen and set(seen) == {FP32_TRAINING_SDPA if switched else "sdpa"}, seen


@pytest.mark.slow
def test_aligner_seed_reseeds_training_alone(tmp_path, monkeypatch):
    """aligner.seed: replicates of the aligner on one recommender and one alignment data folder. It seeds the
    training sample and the run; the validation sample stays on the top-level seed."""
    from recexplainer.aligner import stage as aligner_stage

    from .helpers import TINY, TINY_SASREC, compose_config

    base = [f"paths.artifacts={tmp_path}", *TINY, *TINY_SASREC, *ALIGN, "seed=7"]
    default, reseeded = compose_config(base), compose_config([*base, "aligner.seed=3"])
    assert aligner_stage.key_fields(default)["aligner"]["seed"] is None  # keyed like every field
    for upstream in ("recommender", "alignment_data"):
        assert stage_folder(default, upstream) == stage_folder(reseeded, upstream)
    assert stage_folder(default, "aligner") != stage_folder(reseeded, "aligner")
    assert stage_folder(default, "evaluate") != stage_folder(reseeded, "evaluate")
    assert aligner_stage.training_seed(default) == 7 and aligner_stage.training_seed(reseeded) == 3

    seeds: dict[str, int] = {}
    everything: list[int] = []

    class Built(Exception):
        pass

    def record(folder, split, *args, **kwargs):
        seeds[split] = kwargs["seed"]
        if split == "valid":
            raise Built  # the wiring is what is tested: stop before training
        return original(folder, split, *args, **kwargs)

    original = AlignmentDataset.for_model
    monkeypatch.setattr(aligner_stage.AlignmentDataset, "for_model", record)
    monkeypatch.setattr(aligner_stage.L, "seed_everything", lambda s, **kw: everything.append(s))
    with pytest.raises(Built):
        run(reseeded)
    assert seeds == {"train": 3, "valid": 7} and everything[-1] == 3


@pytest.mark.slow
def test_cpu_bf16_trains_and_evaluates_with_fp32_weights_saved(tmp_path, caplog):
    """trainer=cpu_bf16: the aligner trains under bf16 autocast (loss finite) with the frozen linear weights
    stored in bf16, saves fp32 weights, and the evaluation runs the aligned model under bf16 autocast on the
    same upstream folders as trainer=cpu."""
    import logging

    from safetensors.torch import load_file

    from .helpers import TINY, TINY_SASREC, compose_config

    base = [f"paths.artifacts={tmp_path}", *TINY, *TINY_SASREC, *ALIGN, "trainer=cpu_bf16"]
    cfg = compose_config(base)
    with caplog.at_level(logging.INFO, logger="recexplainer.aligner.stage"):
        folder = run(cfg)
    assert any("frozen linear weights stored in bf16" in r.getMessage() for r in caplog.records)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["aligner/optimizer_steps"] == 3 and 0 < metrics["train/loss"] < float("inf")
    for name in ("adapter/adapter_model.safetensors", "projectors.safetensors"):
        assert {t.dtype for t in load_file(folder / name).values()} == {torch.float32}, name
    evaluated = run(
        compose_config(
            [*base, "stage=evaluate", "evaluation.max_examples=2", "evaluation.baselines=[]"]
            + [
                f"evaluation.max_examples_per_task.{t}=2"
                for t in ("interest", "interest_hard", "ranking", "history")
            ]
        )
    )
    protocol = json.loads((evaluated / "protocol.json").read_text())
    assert protocol["precision"] == "bf16-mixed"
    assert protocol["environment"]["torch"] == torch.__version__ and "bf16" in protocol["environment"]["cpu"]
    results = json.loads((evaluated / "metrics.json").read_text())
    assert 0.0 <= results["task3/acc"] <= 1.0 and 0.0 <= results["task1/hr@5"] <= 1.0


@pytest.mark.slow
def test_evaluation_precision_evaluates_an_fp32_aligner_in_bf16(trained, monkeypatch):
    """evaluation.precision: the fp32 aligner evaluated with bf16 weights (bf16-true) without retraining;
    null and the trainer's own precision give the same evaluate key (the effective precision is keyed)."""
    from .helpers import TINY, TINY_SASREC, compose_config

    cfg, aligner_folder = trained
    base = [f"paths.artifacts={cfg.paths.artifacts}", *TINY, *TINY_SASREC, *ALIGN, "stage=evaluate"]
    base += ["evaluation.max_examples=2", "evaluation.baselines=[]"]
    base += [
        f"evaluation.max_examples_per_task.{t}=2" for t in ("interest", "interest_hard", "ranking", "history")
    ]
    default, same = compose_config(base), compose_config([*base, "evaluation.precision=32-true"])
    bf16 = compose_config([*base, "evaluation.precision=bf16-true"])
    assert stage_folder(default, "evaluate") == stage_folder(same, "evaluate")
    assert stage_folder(bf16, "evaluate") != stage_folder(default, "evaluate")
    assert stage_folder(bf16, "aligner") == aligner_folder  # no retraining
    from recexplainer.evaluate.predictors import LLMPredictor

    dtypes = set()
    predict = LLMPredictor.predict

    def spy(self, kind, rows):
        dtypes.add(next(self.model.parameters()).dtype)
        return predict(self, kind, rows)

    monkeypatch.setattr(LLMPredictor, "predict", spy)
    folder = run(bf16)
    assert dtypes == {torch.bfloat16}  # the weights themselves, cast by Lightning's bf16-true
    assert json.loads((folder / "protocol.json").read_text())["precision"] == "bf16-true"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["task3/acc"] <= 1.0 and metrics["task1/valid_ratio"] >= 0.0
    records = [json.loads(x) for x in (folder / "predictions" / "aligned.jsonl").read_text().splitlines()]
    assert records and all(0.0 <= r["p_yes"] <= 1.0 for r in records if r["task"] == "interest")


@pytest.mark.slow
def test_pair_batching_reaches_the_training_sampler(tmp_path, monkeypatch):
    """aligner.pair_batching=true: the stage hands the sampler the interest pairs' keys (both answers of a
    prefix in one batch); off, it hands none (the earlier batches)."""
    from recexplainer.aligner import stage as aligner_stage

    from .helpers import TINY, TINY_SASREC, compose_config

    seen: list = []

    class Spy(aligner_stage.LengthGroupedSampler):
        def __init__(self, *args, groups=None, **kwargs):
            super().__init__(*args, groups=groups, **kwargs)
            seen.append((groups, [list(u) for u in self.units]))

    monkeypatch.setattr(aligner_stage, "LengthGroupedSampler", Spy)
    base = [f"paths.artifacts={tmp_path}", *TINY, *TINY_SASREC, *ALIGN, "aligner.max_steps=1"]
    run(compose_config([*base, "aligner.train_tasks=[interest,retrieval]", "aligner.pair_batching=true"]))
    groups, units = seen[0]  # the training loader's sampler (the validation one follows)
    assert groups is not None and any(len(u) == 2 for u in units)
    assert all(
        groups[u[0]] == groups[u[1]] and groups[u[0]].startswith("interest/") for u in units if len(u) == 2
    )
    seen.clear()
    run(compose_config([*base, "aligner.train_tasks=[interest,retrieval]"]))
    assert seen[0][0] is None


@pytest.mark.slow
def test_a_time_budget_trains_the_steps_whose_batches_hold_its_tokens(trained, tmp_path):
    """aligner.budget_minutes: 1.5 epochs' tokens train into a second epoch, up to the first step that
    reaches the budget in the sampler's order; max_steps no longer caps it."""
    from recexplainer.aligner.data import LengthGroupedSampler
    from recexplainer.aligner.stage import encoded_split

    from .helpers import TINY, TINY_SASREC, compose_config

    cfg, folder = trained
    model, tokenizer, formatter = setup.load(folder)
    train = encoded_split(cfg, stage_folder(cfg, "alignment_data"), "train", model, tokenizer, formatter)
    lengths, budget = train.lengths(), int(1.5 * train.n_tokens)
    sampler = LengthGroupedSampler(lengths, 4, seed=cfg.seed, mega=cfg.aligner.length_group_mega)
    micro = []  # token count of each micro-batch in training order, three epochs (6 micro-batches each)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        micro += [sum(lengths[i] for i in b) for b in sampler]
    expected, seen = 0, 0
    while seen < budget:  # accumulate_grad_batches=2: two micro-batches a step
        seen += sum(micro[2 * expected : 2 * expected + 2])
        expected += 1
    assert 3 < expected < 6

    budgeted = compose_config(
        [f"paths.artifacts={tmp_path}", *TINY, *TINY_SASREC, *ALIGN, "aligner.budget_minutes=1",
         f"aligner.budget_tokens_per_s={budget / 60}"]
    )  # fmt: skip
    metrics = json.loads((run(budgeted) / "metrics.json").read_text())
    assert metrics["aligner/planned_steps"] == metrics["aligner/optimizer_steps"] == expected
    assert metrics["train/epochs_run"] == 2
    # the budget ends mid-epoch, after the end-of-epoch validation: the final weights are validated too
    assert metrics["aligner/validated_at_step"] == expected
    assert math.isfinite(metrics["valid/loss"])
