"""How much of the recommender's task-1 decision survives a linear map into the LLM's title-embedding space?

For every catalog item, a ridge fit maps the LLM's static embedding of its title (mean of the title's token
embeddings, or its first token's) to the recommender's item vector; a user's task-1 candidates are then the 5
items with the highest ``u . (fitted vector of the title)``. HR@5 against the recommender's top-1 on the test
users is the ceiling of a "copy the projected user vector and read it out through the tied LM head" solution
(the idea behind ``aligner.projector_init=title_lsq_top1``); with the recommender's own item vectors it is 1.

Needs the pipeline's data and alignment_data stages built for the same overrides (any mode with a <user>
placeholder, e.g. ``alignment=intention``); reads them from the artifact cache, trains nothing:

    python experiments/title_space_ceiling.py alignment=intention recommender.train.patience=10
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def hr_at_5(scores: torch.Tensor, rows: list[dict]) -> float:
    """Task-1 HR@5 (the evaluator's metric) of the 5 best-scored items, padding and history excluded."""
    from recexplainer.evaluation.metrics import retrieval_scores

    hits = 0.0
    for s, row in zip(scores, rows, strict=True):
        s = s.clone()
        s[0] = -torch.inf
        s[row["history"]] = -torch.inf
        hits += retrieval_scores(s.topk(5).indices.tolist(), row["labels"]["item"])[0]
    return hits / len(rows)


def main(overrides: list[str]) -> None:
    from recexplainer.aligner import setup
    from recexplainer.aligner.init import title_embeddings
    from recexplainer.config import register_configs
    from recexplainer.data.dataset import SequentialData
    from recexplainer.pipeline import stage_folder

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    folders = {s: stage_folder(cfg, s) for s in ("data", "alignment_data")}
    for name, folder in folders.items():
        if not (folder / "_COMPLETE").exists():
            sys.exit(f"stage {name} is not built for these overrides ({folder}): run the pipeline first")
    titles = SequentialData.load(folders["data"]).titles
    vectors = load_file(folders["alignment_data"] / "vectors.safetensors")
    items = vectors["items"].float()

    def rows(split: str) -> list[dict]:
        path = folders["alignment_data"] / "examples" / f"retrieval.{split}.jsonl"
        return [json.loads(line) for line in path.open()]

    train, test = rows("train"), rows("test")
    users = vectors["users_test"][[r["user_row"] for r in test]].float()
    lm, tokenizer = setup.load_base_llm(cfg.llm, cfg.paths.assets)
    mean_title = title_embeddings(lm, tokenizer, titles)
    table = lm.get_input_embeddings().weight.detach().float()
    first = torch.zeros_like(mean_title)
    for i, title in enumerate(titles):
        ids = tokenizer(title, add_special_tokens=False)["input_ids"] if title else []
        if ids:
            first[i] = table[ids[0]]
    result = {"recommender_vectors_hr@5": hr_at_5(users @ items.T, test), "test_users": len(test)}
    top = [item for item, _ in Counter(r["labels"]["item"] for r in train).most_common(5)]
    result["top1_frequency_hr@5"] = sum(r["labels"]["item"] in top for r in test) / len(test)
    catalog = torch.arange(1, len(titles))
    for name, space in (("mean_title", mean_title), ("first_token", first)):
        for ridge in (1e-3, 1e-1, 1.0, 10.0):
            x = torch.cat([space, torch.ones(len(space), 1)], 1).double()
            gram = x[catalog].T @ x[catalog] + ridge * torch.eye(x.shape[1], dtype=torch.float64)
            fit = torch.linalg.solve(gram, x[catalog].T @ items[catalog].double())
            fitted = (x @ fit).float()
            residual = (fitted[catalog] - items[catalog]).norm() / (
                items[catalog] - items[catalog].mean(0)
            ).norm()
            result[f"{name}/ridge={ridge:g}"] = {
                "fit_residual": round(float(residual), 3),
                "hr@5": hr_at_5(users @ fitted.T, test),
            }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
