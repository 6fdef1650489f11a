"""Where evaluation decoding spends its time on this CPU: SmolLM2-135M ``generate`` on random prompts,
batched vs one at a time, split into prefill and decoding, plus a torch.profiler table of the batched run.

    python experiments/profile_generate.py --threads 2 --batch 8 --prompt-len 250 --new-tokens 24

Prefill cost per example barely changes with batching on a compute-bound CPU; decoding steps do batch.
The speed-up an evaluation task can reach is bounded by its prefill share (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    args = parser.parse_args()

    import torch

    from recexplainer.llm import loading

    torch.set_num_threads(args.threads)
    lm, tokenizer = loading.load_llm(str(loading.cached_smollm2()))
    b, n = args.batch, args.new_tokens
    ids = torch.randint(100, 40000, (b, args.prompt_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for i in range(b):
        mask[i, : i * 5] = 0  # left padding of different lengths, as in a length-sorted batch
    embeds = lm.get_input_embeddings()(ids).detach()

    @torch.no_grad()
    def generate(k: int) -> float:
        start = time.perf_counter()
        lm.generate(
            inputs_embeds=embeds[:k],
            attention_mask=mask[:k],
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return time.perf_counter() - start

    @torch.no_grad()
    def prefill(k: int) -> float:
        start = time.perf_counter()
        lm.model(inputs_embeds=embeds[:k], attention_mask=mask[:k])
        return time.perf_counter() - start

    generate(1), generate(b)  # warm-up
    for k in (1, b):
        total, pre = generate(k), prefill(k)
        step = (total - pre) / n
        print(f"batch {k}: generate {total:.2f} s, prefill {pre:.2f} s, decoding {1000 * step:.0f} ms/step")
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
