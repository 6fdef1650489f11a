"""Aligner training throughput for a model *shape*, randomly initialised (part of `make gpu-check`).

Real weights may not be at hand on an offline GPU machine, and throughput does not depend on them: this
builds a ``LlamaForCausalLM`` with the shape of SmolLM2-135M, a 1B or an 8B Llama (Llama-3.2-1B / Llama-3-8B), adds the
placeholder tokens, LoRA (r 16, alpha 32, on q/k/v/o) and the mlp2x_gelu projectors, and trains it with the
aligner's own LightningModule on synthetic alignment-like examples (prompts of ``--min-len`` to
``--max-len`` tokens with one user and three item placeholders, 8 answer tokens), in length-grouped batches,
as the stage does. Reports real (non-padding) tokens/s after ``--warmup`` steps and the peak memory.

    python experiments/bench_gpu_aligner.py --arch smollm2_135m --precision bf16-mixed --steps 40
    python experiments/bench_gpu_aligner.py --arch llama_1b --precision bf16-mixed --steps 30 --batch 8
    python experiments/bench_gpu_aligner.py --arch llama_8b --precision bf16-mixed --steps 12 --batch 8
    python experiments/bench_gpu_aligner.py --arch tiny --accelerator cpu --precision 32-true --steps 4  # smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ARCHS = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    ),
    "smollm2_135m": dict(  # HuggingFaceTB/SmolLM2-135M-Instruct
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "llama_1b": dict(  # meta-llama/Llama-3.2-1B sizes
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "llama_8b": dict(  # meta-llama/Meta-Llama-3-8B-Instruct sizes (experiment=gpu_7b)
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}
D_REC = 64  # the default SASRec hidden size
ANSWER = 8


def examples(n: int, vocab: int, min_len: int, max_len: int, seed: int) -> list[dict]:
    """Synthetic examples in the aligner's item format (input_ids, labels, users, items)."""
    import torch

    from recexplainer.aligner.data import IGNORE

    g = torch.Generator().manual_seed(seed)
    user_id, item_id = vocab - 2, vocab - 1
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(0, vocab - 2, (length,), generator=g)
        slots = torch.randperm(length - ANSWER - 1, generator=g)[:4] + 1
        ids[slots[0]] = user_id
        ids[slots[1:]] = item_id
        labels = torch.full((length,), IGNORE)
        labels[-ANSWER:] = ids[-ANSWER:]
        out.append(
            {
                "input_ids": ids.tolist(),
                "labels": labels.tolist(),
                "users": torch.randn(1, D_REC, generator=g),
                "items": torch.randn(3, D_REC, generator=g),
            }
        )
    return out


def build(arch: str, lora_r: int, gradient_checkpointing: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from recexplainer.aligner.model import RecExplainerLM
    from recexplainer.aligner.setup import apply_lora

    shape = ARCHS[arch]
    config = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config)
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = argparse.Namespace(
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        lora_dropout=0.05,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    lm = apply_lora(lm, lora)
    vocab = shape["vocab_size"]
    return RecExplainerLM(lm, vocab - 2, vocab - 1, D_REC, "mlp2x_gelu", "add", "example"), vocab


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="smollm2_135m")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (one batch each)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=60)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    if args.warmup >= args.steps:
        sys.exit(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from recexplainer.aligner.data import LengthGroupedSampler, collate
    from recexplainer.aligner.module import AlignerModule

    model, vocab = build(args.arch, args.lora_r, args.gradient_checkpointing)
    data = examples(args.batch * args.steps, vocab, args.min_len, args.max_len, seed=0)
    sampler = LengthGroupedSampler([len(e["input_ids"]) for e in data], args.batch, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad_id=0))
    module = AlignerModule(model, lr=5e-4, projector_lr=2e-3, total_steps=args.steps)

    class Timing(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if batch_idx >= args.warmup:
                self.times.append(time.perf_counter() - self.t)
                self.tokens.append(int(batch["attention_mask"].sum()))

    timing = Timing()
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timing],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    wall = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - wall
    per_step = [n / t for n, t in zip(timing.tokens, timing.times, strict=True)]
    result = {
        "arch": args.arch,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "precision": args.precision,
        "batch": args.batch,
        "steps": args.steps,
        "timed_steps": len(per_step),
        "tokens_per_s_overall": round(sum(timing.tokens) / max(sum(timing.times), 1e-9), 1),
        "tokens_per_s_median_step": round(statistics.median(per_step), 1) if per_step else None,
        "wall_s": round(wall, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "final_loss": round(float(trainer.callback_metrics.get("train/loss", float("nan"))), 4),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
