"""LLM loading: the package's tiny tokenizer, tiny random Llama, load_llm, and the GGUF -> safetensors conversion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from recexplainer import assets
from recexplainer.llm import loading


@pytest.fixture(scope="module")
def tok():
    return loading.tiny_tokenizer()


def test_tiny_tokenizer_chatml_and_pad(tok):
    assert loading.TINY_TOKENIZER_DIR.is_dir()
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    messages = [{"role": "user", "content": "Recommend a movie."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nRecommend a movie.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    ids = ids["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids and tok.eos_token_id in ids
    # special tokens are single ids, and plain text round-trips
    assert tok("<|im_end|>", add_special_tokens=False).input_ids == [tok.eos_token_id]
    assert tok.decode(tok("Toy Story (1995)", add_special_tokens=False).input_ids) == "Toy Story (1995)"


def test_tiny_tokenizer_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        loading.tiny_tokenizer(tmp_path)


def test_the_tiny_tokenizer_ships_inside_the_package():
    import recexplainer

    assert loading.TINY_TOKENIZER_DIR.is_relative_to(Path(recexplainer.__file__).parent)


def test_tiny_random_llama_forward_with_inputs_embeds(tok):
    model = loading.tiny_random_llama(tok)
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        2,
        64,
        4,
        2,
    )
    batch = tok(["a short prompt", "another, longer prompt here"], padding=True, return_tensors="pt")
    embeds = model.get_input_embeddings()(batch.input_ids)
    soft = torch.randn(2, 3, cfg.hidden_size)  # e.g. projected recommender embeddings
    embeds = torch.cat([soft, embeds], dim=1)
    mask = torch.cat([torch.ones(2, 3, dtype=batch.attention_mask.dtype), batch.attention_mask], dim=1)
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask)
    assert out.logits.shape == (2, embeds.shape[1], len(tok))
    assert torch.isfinite(out.logits).all()


def test_tiny_random_llama_is_deterministic(tok):
    state = torch.random.get_rng_state()
    a = loading.tiny_random_llama(tok, seed=3).state_dict()
    b = loading.tiny_random_llama(tok, seed=3).state_dict()
    c = loading.tiny_random_llama(tok, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"]
    )


@pytest.mark.slow
def test_load_llm_local_folder_sets_pad(tok, tmp_path):
    model = loading.tiny_random_llama(tok, n_layers=1)
    model.save_pretrained(tmp_path)
    no_pad = loading.tiny_tokenizer()
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    loaded, tokenizer = loading.load_llm(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert not loaded.training and loaded.dtype == torch.float32
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    half, _ = loading.load_llm(str(tmp_path), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        loading.load_llm(str(tmp_path), dtype="int8")


def test_load_llm_unavailable_is_clear(tmp_path):
    with pytest.raises(loading.LLMNotAvailableError, match="does not exist"):
        loading.load_llm(str(tmp_path / "nope"))
    with pytest.raises(loading.LLMNotAvailableError, match="offline") as err:
        loading.load_llm("recexplainer-tests/no-such-model-anywhere")
    assert "cached_smollm2" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(loading.LLMNotAvailableError, match="no config.json"):
        loading.load_llm(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="convert_gguf"):
        loading.load_llm(str(tmp_path / "model.gguf"))


def test_half_written_conversion_is_not_complete(tmp_path):
    out = tmp_path / "models" / loading.SMOLLM2_FOLDER
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # looks like a model folder, but the marker is missing
    assert not loading.is_complete(out)
    # no GGUF asset in this cache: the half folder is not returned, the asset error says what to run
    with pytest.raises(assets.AssetError, match="recexplainer.assets fetch smollm2-135m-gguf"):
        loading.cached_smollm2(tmp_path)
    (out / loading.COMPLETE_MARKER).write_text("{}")
    assert loading.cached_smollm2(tmp_path) == out


def test_publish_replaces_unfinished_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("half")
    new = tmp_path / ".model.tmp-1"
    new.mkdir()
    (new / "config.json").write_text("{}")
    (new / loading.COMPLETE_MARKER).write_text("{}")
    loading._publish(new, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", loading.COMPLETE_MARKER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or stale siblings left


def test_failed_conversion_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 64)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="GGUF"):
        loading.convert_gguf(bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]
    with pytest.raises(FileNotFoundError):
        loading.convert_gguf(tmp_path / "missing.gguf", out)


@pytest.mark.slow
def test_convert_real_smollm2_gguf(tmp_path):
    try:
        source = assets.asset_dir(loading.SMOLLM2_ASSET) / loading.SMOLLM2_GGUF
    except assets.AssetError as err:
        pytest.skip(str(err))
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a killed earlier conversion: must be replaced
    start = time.perf_counter()
    assert loading.convert_gguf(source, out) == out
    convert_s = time.perf_counter() - start
    assert loading.is_complete(out)
    assert json.loads((out / loading.COMPLETE_MARKER).read_text())["source"] == loading.SMOLLM2_GGUF
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reload_s = time.perf_counter() - start
    print(f"convert {convert_s:.1f}s, reload {reload_s:.1f}s")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (576, 30, 49152)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(cfg, "quantization_config")
    assert model.dtype == torch.float32
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"

    # weights after reload equal the GGUF tensors dequantized independently with the gguf library
    params = model.state_dict()
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.29.attn_v.weight": "model.layers.29.self_attn.v_proj.weight",
        "output_norm.weight": "model.norm.weight",
    }
    tensors = {t.name: t for t in GGUFReader(source).tensors if t.name in pairs}
    for gguf_name, hf_name in pairs.items():
        t = tensors[gguf_name]
        expected = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(params[hf_name], expected), hf_name

    # the chat template survived and greedy generation produces text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert "<|im_start|>assistant\n" in tokenizer.decode(ids["input_ids"][0])
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"generated: {text!r}")
    assert text.strip()

    # load_llm on the converted folder works as well, and a second convert is a no-op
    loaded, _ = loading.load_llm(str(out))
    assert torch.equal(loaded.model.norm.weight, model.model.norm.weight)
    start = time.perf_counter()
    assert loading.convert_gguf(source, out) == out
    assert time.perf_counter() - start < 1.0
