"""What bf16 buys on this CPU, below the stages: a matrix product, a SmolLM2-135M-shaped forward pass, and a
LoRA training step (fp32; bf16 autocast; autocast with the frozen Linear weights stored in bf16).

Random weights of SmolLM2-135M's shape (no assets needed); medians of a few repeats, 2 threads by default.
On a CPU without native bf16 (no AMX / AVX512-BF16) the bf16 rows are emulated and slower than fp32.

    python experiments/probe_cpu_bf16.py --out benchmarks/cpu-bf16-2026-11-27/probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN primitives, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from recexplainer.llm.loading import test_tokenizer, tiny_random_llama
    from recexplainer.training import cpu_description, environment

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {"cpu": cpu_description(), "environment": environment(), "threads": args.threads}

    # 1. one matrix product of the MLP's shape over 2,048 tokens
    flops = 2 * 2048 * 576 * 1536
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        out[f"matmul_gflops_{name}"] = flops / median_seconds(lambda: a @ b, 30) / 1e9  # noqa: B023

    # 2. forward pass over 8 x 128 tokens
    # SmolLM2-135M's shape (experiments/bench_gpu_aligner.py ARCHS) with the test tokenizer's vocabulary
    tokenizer = test_tokenizer()
    shape = dict(n_layers=30, hidden_size=576, n_heads=9, n_kv_heads=3, intermediate_size=1536)
    vocab = len(tokenizer)
    ids = torch.randint(0, vocab, (8, 128))
    model = tiny_random_llama(tokenizer, **shape)
    with torch.no_grad():
        out["forward_8x128_s_fp32"] = median_seconds(lambda: model.model(input_ids=ids), args.repeats)

        def autocast_forward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.model(input_ids=ids)

        out["forward_8x128_s_bf16_autocast"] = median_seconds(autocast_forward, args.repeats)
        model.to(torch.bfloat16)
        out["forward_8x128_s_bf16_weights"] = median_seconds(lambda: model.model(input_ids=ids), args.repeats)

    # 3. LoRA training step, 16 x 44 tokens (the default recipe's micro-batch), loss on 4 positions
    ids = torch.randint(0, vocab, (16, 44))

    def step_fn(frozen_bf16: bool, autocast: bool) -> Callable[[], None]:
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        peft_model = get_peft_model(tiny_random_llama(tokenizer, **shape), lora)
        if frozen_bf16:
            for module in peft_model.base_model.model.model.modules():
                if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                    module.weight.data = module.weight.data.to(torch.bfloat16)
        peft_model.train()
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        head = peft_model.base_model.model.lm_head

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                hidden = peft_model.base_model.model.model(input_ids=ids).last_hidden_state
                loss = head(hidden[:, -4:]).float().logsumexp(-1).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return step

    out["train_step_16x44_s_fp32"] = median_seconds(step_fn(False, False), args.repeats)
    out["train_step_16x44_s_bf16_autocast"] = median_seconds(step_fn(False, True), args.repeats)
    out["train_step_16x44_s_bf16_autocast_frozen_bf16"] = median_seconds(step_fn(True, True), args.repeats)
    out["command"] = f"python experiments/probe_cpu_bf16.py --threads {args.threads} --repeats {args.repeats}"
    print(json.dumps(out, indent=1))
    if args.out:
        from recexplainer.artifacts import write_json

        write_json(args.out, out)


if __name__ == "__main__":
    main()
