"""Building the aligner's model: base LLM, placeholder tokens, LoRA, projectors; saving and reloading it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recexplainer.aligner.model import RecExplainerLM
from recexplainer.artifacts import atomic_path, write_json
from recexplainer.text import ChatFormatter

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the weights of RecExplainerLM outside the LLM and its adapter, saved in projectors.safetensors
HEAD_KEYS = (
    "user_projector",
    "item_projector",
    "placeholder_embeddings",
    "item_query",
    "item_logit_scale",
    "projected_query",
    "projected_logit_scale",
)


def load_base_llm(llm: Any, assets_cache: str | None = None) -> tuple[torch.nn.Module, Any]:
    """The configured causal LM and its tokenizer, from local files only."""
    from recexplainer.llm import loading

    if llm.source == "tiny_random":
        tokenizer = loading.tiny_tokenizer()
        return loading.tiny_random_llama(
            tokenizer, n_layers=llm.tiny_layers, hidden_size=llm.tiny_hidden
        ), tokenizer
    if llm.source == "smollm2_gguf":
        path = str(loading.cached_smollm2(Path(assets_cache) if assets_cache else None))
    else:
        if not llm.path:
            raise ValueError(f"llm.path is required for llm.source=pretrained ({llm.name})")
        path = llm.path
    return loading.load_llm(path, dtype=llm.dtype, trust_remote_code=llm.trust_remote_code)


def add_placeholder_tokens(lm: torch.nn.Module, tokenizer: Any, user: str, item: str) -> tuple[int, int]:
    """Add ``user`` / ``item`` as special tokens; new embedding rows start at the mean of the old ones."""
    from tokenizers import AddedToken

    old = lm.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (user, item)], special_tokens=True
    )
    ids = tokenizer.convert_tokens_to_ids([user, item])
    if max(ids) >= old:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for table in {
                id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m
            }.values():
                table.weight[old:] = table.weight[:old].mean(0, keepdim=True)
    return ids[0], ids[1]


def apply_lora(lm: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(lm, config)


def build(cfg: Any, d_rec: int) -> tuple[RecExplainerLM, Any, ChatFormatter]:
    """The trainable aligner model for a config: LLM + placeholders + LoRA + projectors."""
    lm, tokenizer = load_base_llm(cfg.llm, cfg.paths.assets)
    user_id, item_id = add_placeholder_tokens(
        lm, tokenizer, cfg.prompt.user_placeholder, cfg.prompt.item_placeholder
    )
    if cfg.aligner.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = apply_lora(lm, cfg.aligner)
    ac = cfg.aligner
    model = RecExplainerLM(
        lm,
        user_id,
        item_id,
        d_rec,
        ac.projector,
        ac.injection,
        ac.loss_weighting,
        item_head_weight=ac.item_head_weight,
        item_head_temperature=ac.item_head_temperature,
        item_head_space=ac.item_head_space,
        title_distill_weight=ac.title_distill_weight,
        title_distill_temperature=ac.title_distill_temperature,
    )
    formatter = ChatFormatter(tokenizer, cfg.llm.prompt_template, cfg.llm.system_prompt)
    return model, tokenizer, formatter


def save(model: RecExplainerLM, tokenizer: Any, cfg: Any, d_rec: int, folder: Path) -> None:
    """LoRA adapter, projectors and placeholder rows as safetensors, plus what is needed to rebuild."""
    # the resized embedding rows are re-created identically on load (mean init) and the placeholder rows are
    # saved below: saving the whole embedding table (PEFT default after a resize) would add ~100 MB per 135M LLM
    model.lm.save_pretrained(str(folder / "adapter"), save_embedding_layers=False)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    extra = {
        k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(HEAD_KEYS)
    }
    with atomic_path(folder / "projectors.safetensors") as tmp:
        save_file(extra, str(tmp))
    from omegaconf import OmegaConf

    write_json(
        folder / "aligner.json",
        {
            "d_rec": d_rec,
            "llm": OmegaConf.to_container(cfg.llm, resolve=True),
            "aligner": OmegaConf.to_container(cfg.aligner, resolve=True),
            "user_placeholder": cfg.prompt.user_placeholder,
            "item_placeholder": cfg.prompt.item_placeholder,
            "user_token_id": model.user_token_id,
            "item_token_id": model.item_token_id,
        },
    )


def load(folder: Path, assets_cache: str | None = None) -> tuple[RecExplainerLM, Any, ChatFormatter]:
    """Rebuild a trained aligner from its stage folder (base LLM + adapter + projectors), in eval mode."""
    from omegaconf import OmegaConf
    from peft import PeftModel

    spec = json.loads((folder / "aligner.json").read_text())
    llm, aligner = OmegaConf.create(spec["llm"]), OmegaConf.create(spec["aligner"])
    lm, tokenizer = load_base_llm(llm, assets_cache)
    user_id, item_id = add_placeholder_tokens(
        lm, tokenizer, spec["user_placeholder"], spec["item_placeholder"]
    )
    if (user_id, item_id) != (spec["user_token_id"], spec["item_token_id"]):
        raise RuntimeError(
            f"placeholder token ids changed ({user_id}, {item_id}) vs saved "
            f"({spec['user_token_id']}, {spec['item_token_id']}): the base tokenizer differs"
        )
    if (folder / "adapter").is_dir():
        lm = PeftModel.from_pretrained(lm, str(folder / "adapter"))
    model = RecExplainerLM(
        lm,
        user_id,
        item_id,
        spec["d_rec"],
        aligner.projector,
        aligner.injection,
        # aligners saved before the item head existed have no such keys: no head
        item_head_weight=aligner.get("item_head_weight", 0.0),
        item_head_temperature=aligner.get("item_head_temperature", 1.0),
        item_head_space=aligner.get("item_head_space", "projected"),  # aligners saved before the knob
    )
    missing, unexpected = model.load_state_dict(load_file(folder / "projectors.safetensors"), strict=False)
    if unexpected or any(k.startswith(HEAD_KEYS) for k in missing):
        raise RuntimeError(
            f"projectors.safetensors does not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval(), tokenizer, ChatFormatter(tokenizer, llm.prompt_template, llm.system_prompt)
