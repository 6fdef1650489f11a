"""Shared test helpers (not tests): the tiny configuration, a tiny Llama, the aligner and evaluation
overrides of the end-to-end tests, a fake OpenAI-compatible server, a fake artifact root for the report.
Test modules import from here, never from each other; fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import LlamaConfig, LlamaForCausalLM

from recexplainer.artifacts import MARKER
from recexplainer.cli import CONF_DIR
from recexplainer.config import register_configs
from recexplainer.data.dataset import SequentialData

TINY = [
    "dataset=synthetic",
    "recommender.hidden_size=16",
    "recommender.train.max_epochs=3",
    "recommender.train.batch_size=16",
    "recommender.train.patience=50",
    "trainer.enable_progress_bar=false",
    "num_threads=1",
]
TINY_SASREC = [
    "recommender.n_layers=1",
    "recommender.n_heads=1",
    "recommender.inner_size=32",
    "recommender.max_len=10",
]


def compose_config(overrides: list[str], pin_precision: bool = True):
    """The composed config; ``pin_precision``: fp32 unless a trainer or precision is chosen, so that tests
    run the same numerics on every CPU (the default precision depends on the CPU's bf16 support)."""
    if pin_precision and not any(o.startswith(("trainer=", "trainer.precision=")) for o in overrides):
        overrides = [*overrides, "trainer.precision=32-true"]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


USER, ITEM, VOCAB, H, D_REC = 97, 98, 100, 32, 8


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


ALIGN = [
    "stage=aligner",
    "llm=tiny_random",
    "prompt=hybrid",
    *[f"tasks.{t}.max_eval=8" for t in ("retrieval", "ranking", "interest", "interest_hard", "history")],
    *[f"tasks.{t}.max_eval=4" for t in ("item_recovery", "item_similar", "item_metadata")],
    "aligner.max_train_examples=24",
    "aligner.uncapped_tasks=[]",  # a plain sample of every task, whatever the default
    "aligner.max_valid_examples=8",
    "aligner.batch_size=4",
    "aligner.accumulate_grad_batches=2",
    "aligner.max_steps=3",
    "aligner.lora_r=4",
]


SMALL_EVAL = [
    "evaluation.max_examples=4",
    "evaluation.max_examples_per_task.interest=6",
    "evaluation.max_examples_per_task.interest_hard=6",
    "evaluation.max_examples_per_task.ranking=4",
    "evaluation.max_examples_per_task.history=2",
    "evaluation.batch_size=4",
    "evaluation.num_beams=2",
    "evaluation.baselines=[random,popularity]",
]
TINY_ALIGNER = [
    "llm=tiny_random",
    "aligner.max_train_examples=16",
    "aligner.uncapped_tasks=[]",  # a plain sample of every task, whatever the default
    "aligner.max_valid_examples=4",
    "aligner.batch_size=4",
    "aligner.accumulate_grad_batches=1",
    "aligner.max_steps=2",
    "aligner.lora_r=4",
    "trainer.log_every_n_steps=1",  # curves for the report from two optimizer steps
    *[f"tasks.{t}.max_eval=6" for t in ("retrieval", "ranking", "interest", "interest_hard", "history")],
    *[f"tasks.{t}.max_eval=3" for t in ("item_recovery", "item_similar", "item_metadata")],
]


class FakeServer:
    """Answers each request with the next scripted behaviour: an int = HTTP error code, 'sleep' = too
    slow, 'garbage' = not JSON, 'nochoices' = JSON without choices, any other string = the reply."""

    def __init__(self, script, default="2"):
        self.script, self.default = list(script), default
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                step = server.script.pop(0) if server.script else server.default
                if step == "sleep":
                    time.sleep(0.5)
                    step = server.default
                if isinstance(step, int):
                    self.send_response(step)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                if step == "garbage":
                    payload = b"<html>oops"
                elif step == "nochoices":
                    payload = b'{"error": "x"}'
                else:
                    payload = json.dumps({"choices": [{"message": {"content": step}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


REPORT_TITLES = ["[pad]", "Heat (1995)", "Tom & Jerry <3", "Alien (1979)", "Fargo (1996)", "Babe (1995)"]
REPORT_TITLES += [f"Movie {i}" for i in range(6, 12)]


def _stage_folder(root, stage, key, metrics, mtime, upstream=None, **cfg):
    folder = root / stage / key
    folder.mkdir(parents=True)
    cfg = {"dataset": {"name": "ml-100k"}, "llm": {"name": "smollm2_135m"}, **cfg}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "key.json").write_text(
        json.dumps({"upstream": {k: str(v) for k, v in (upstream or {}).items()}})
    )
    (folder / MARKER).write_text("ok\n")
    os.utime(folder / MARKER, (mtime, mtime))
    return folder


def _curves(folder, text):
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "logs" / "version_0" / "metrics.csv").write_text(text)


def _record(i, **extra):
    record = {
        "id": f"explain/test/u{i}-pos",
        "history": [1, 2, 3],
        "item": 4,
        "answer": "yes",
        "decision": "yes",
        "p_yes": 0.75,
        "text": f"Yes, explanation {i}.",
        "cited": [],
        "hallucinated": [],
    }
    return record | extra


def report_root(tmp_path, n_records=15, data=True):
    """A fake artifact root for the report: data, recommender, aligner, two evaluate folders (the newer one's baselines shown), two explain
    folders (examples from the newer one)."""
    root = tmp_path / "artifacts"
    folder = root / "data" / "d"
    if data:
        users, items = np.repeat(np.arange(3), 4), np.tile(np.arange(1, 5), 3)
        SequentialData.from_arrays(
            users,
            items,
            np.arange(12.0),
            ["a", "b", "c"],
            [{"id": str(i), "title": t} for i, t in enumerate(REPORT_TITLES)],
        ).save(folder)
        (folder / MARKER).write_text("ok\n")
    up = {"data": folder}
    rec = _stage_folder(
        root,
        "recommender",
        "r",
        {"test/hr@10": 0.3, "test/ndcg@10": 0.17, "test/hr@5": 0.2, "valid/ndcg@10": 0.16, "n_params": 5},
        1000,
        up,
        recommender={"name": "sasrec"},
    )
    _curves(rec, "epoch,step,train/loss_epoch,valid/ndcg@10\n0,9,3.5,\n0,9,,0.1\n1,19,3.1,\n1,19,,0.16\n")
    aligner = _stage_folder(root, "aligner", "al", {}, 1000, prompt={"mode": "hybrid"}, aligner={})
    _curves(aligner, "epoch,step,train/loss,valid/loss\n0,9,3.5,\n0,19,2.0,\n0,19,,2.1\n")
    evaluation = {"evaluation": {"split": "test", "few_shot": 0, "baselines": ["popularity", "item_knn"]}}
    evaluation["evaluation"]["model"] = "aligned"
    explain = {"explain": {"model": "aligned", "split": "test"}, "judge": {"name": "none"}}
    old_task3 = {"task3/acc": 0.5, "baseline/popularity/task3/acc": 0.11, "baseline/item_knn/task3/acc": 0.12}
    new_tasks = {"task1/hr@5": 0.18, "task1/distinct_answers": 12, "task3/acc": 1 / 3}
    new_tasks |= {"baseline/popularity/task1/hr@5": 0.04, "baseline/popularity/task3/acc": 0.795}
    new_tasks |= {"baseline/item_knn/task3/acc": 0.648}
    new_explain = {
        "explain/decision_acc": 0.75,
        "explain/attribution_agreement": 0.6,
        "explain/distinct_ratio": 0.9,
    }
    folders = {}  # (stage, key): metrics, mtime (the newer folder wins), mode, config sections
    for stage, key, metrics, mtime, mode, sections in [
        ("evaluate", "old", old_task3, 1000, "intention", evaluation),
        ("evaluate", "new", new_tasks, 2000, "hybrid", evaluation),
        ("explain", "old", {"explain/decision_acc": 0.5}, 1000, "behavior", explain),
        ("explain", "new", new_explain, 2000, "hybrid", explain),
    ]:
        folders[stage, key] = _stage_folder(
            root, stage, key, metrics, mtime, up, prompt={"mode": mode}, **sections
        )
    old, new = folders["explain", "old"], folders["explain", "new"]
    (old / "explanations.jsonl").write_text(json.dumps(_record(0, text="From the old folder.")) + "\n")
    first = _record(
        1,
        decision="no",
        p_yes=0.4,
        text="Since you liked Heat and Tom & Jerry <3, also Babe.",
        cited=[1, 2],
        hallucinated=[5],
        attributions=[0.25, -0.125, 0.0],
        counterfactual={"cited_delta": 0.5, "random_abs": 0.125, "cited_abs": 0.5, "score": 2.0},
    )
    records = [first] + [_record(i) for i in range(2, n_records + 1)]
    (new / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
