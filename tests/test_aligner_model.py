"""The embedding-projected LLM: projectors, vectorized injection (add / replace), PEFT composition."""

import pytest
import torch

from recexplainer.aligner.data import LengthGroupedSampler, collate
from recexplainer.aligner.model import (
    PlaceholderMismatch,
    RecExplainerLM,
    autocast_weights,
    is_right_padded,
    store_frozen_linears,
)
from recexplainer.aligner.projector import build_projector

from .helpers import D_REC, ITEM, USER, VOCAB, H, tiny_lm


@pytest.mark.parametrize("kind,shape", [("mlp2x_gelu", (3, H)), ("linear", (3, H))])
def test_projector_shapes(kind, shape):
    proj = build_projector(kind, D_REC, H)
    assert proj(torch.randn(3, D_REC)).shape == shape
    if kind == "mlp2x_gelu":
        assert [m.__class__.__name__ for m in proj] == ["Linear", "GELU", "Linear"]
        assert proj[0].out_features == H // 2


def test_identity_projector_needs_equal_dims():
    assert isinstance(build_projector("identity", H, H), torch.nn.Identity)
    with pytest.raises(ValueError, match="identity"):
        build_projector("identity", D_REC, H)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("conv", D_REC, H)


CASES = [(inj, proj) for inj in ("add", "replace") for proj in ("mlp2x_gelu", "linear")]


@pytest.mark.parametrize("injection,projector", CASES)
def test_injection_touches_only_placeholder_positions(injection, projector):
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, projector=projector, injection=injection)
    ids = torch.tensor([[5, USER, 6, ITEM, 7], [ITEM, 8, 9, USER, ITEM]])
    users, items = torch.randn(2, D_REC), torch.randn(3, D_REC)
    base = model.lm.get_input_embeddings()(ids)
    out = model.embed(ids, users, items)
    placeholder = (ids == USER) | (ids == ITEM)
    assert torch.equal(out[~placeholder], base[~placeholder])
    # vectors are consumed in row-major placeholder order
    expected_user = model.user_projector(users)
    expected_item = model.item_projector(items)
    if injection == "add":
        expected_user = expected_user + base[ids == USER]
        expected_item = expected_item + base[ids == ITEM]
    assert torch.allclose(out[ids == USER], expected_user, atol=1e-6)
    assert torch.allclose(out[ids == ITEM], expected_item, atol=1e-6)


def test_different_vectors_change_the_output_and_gradients_reach_the_projectors():
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC)
    ids = torch.tensor([[5, USER, 6, 7]])
    a = model(ids, user_vectors=torch.randn(1, D_REC)).logits
    b = model(ids, user_vectors=torch.randn(1, D_REC)).logits
    assert not torch.allclose(a[:, -1], b[:, -1])
    assert torch.allclose(a[:, 0], b[:, 0])  # causal: the position before the placeholder is unaffected
    loss = model(ids, user_vectors=torch.randn(1, D_REC), labels=ids).loss
    loss.backward()
    assert model.user_projector[0].weight.grad.abs().sum() > 0
    # no item placeholder: the item projector and placeholder row still get a (zero) gradient, so DDP's
    # all-reduce sees the same parameters on every process whatever each one's batch holds
    assert model.item_projector[0].weight.grad is not None
    assert model.item_projector[0].weight.grad.abs().sum() == 0
    assert model.placeholder_embeddings.grad is not None
    with torch.no_grad():  # inference: no extra work, same output
        plain = model.lm(inputs_embeds=model.lm.get_input_embeddings()(torch.tensor([[5, 6, 7]]))).logits
        assert torch.equal(model(torch.tensor([[5, 6, 7]])).logits, plain)


def test_placeholder_count_mismatch_is_a_clear_error():
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC)
    ids = torch.tensor([[5, USER, ITEM, USER]])
    with pytest.raises(PlaceholderMismatch, match="2 user placeholder.*1 user vector"):
        model.embed(ids, torch.randn(1, D_REC), torch.randn(1, D_REC))
    with pytest.raises(PlaceholderMismatch, match="1 item placeholder.*0 item vector"):
        model.embed(ids, torch.randn(2, D_REC), None)


def test_works_through_a_peft_lora_wrapper():
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = RecExplainerLM(lm, USER, ITEM, D_REC)
    ids = torch.tensor([[5, USER, 6, ITEM]])
    out = model(ids, user_vectors=torch.randn(1, D_REC), item_vectors=torch.randn(1, D_REC), labels=ids)
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("user_projector" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)


def test_generate_returns_new_tokens_and_never_placeholders():
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC)
    ids = torch.tensor([[0, 5, USER, 6], [5, USER, 6, 7]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    out = model.generate(
        ids,
        attention_mask=mask,
        user_vectors=torch.randn(2, D_REC),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 6
    assert not ((out == USER) | (out == ITEM)).any()


def test_collate_pads_and_keeps_vector_order():
    batch = [
        {
            "input_ids": [1, USER, 2],
            "labels": [-100, -100, 2],
            "users": torch.ones(1, D_REC),
            "items": torch.zeros(0, D_REC),
        },
        {
            "input_ids": [ITEM, USER],
            "labels": [-100, 5],
            "users": 2 * torch.ones(1, D_REC),
            "items": torch.ones(1, D_REC),
        },
    ]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, USER, 2], [ITEM, USER, 0]]
    assert out["labels"].tolist() == [[-100, -100, 2], [-100, 5, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["user_vectors"][:, 0].tolist() == [1.0, 2.0] and out["item_vectors"].shape == (1, D_REC)
    left = collate(batch, pad_id=0, padding_side="left")
    assert left["input_ids"].tolist()[1] == [0, ITEM, USER]


def test_length_grouped_sampler_covers_everything_once_and_groups_lengths():
    lengths = [((i * 37) % 101) + 1 for i in range(230)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3, mega=4)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(230))

    def spread(bs):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs) / len(bs)

    order = torch.randperm(230, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[k : k + 8] for k in range(0, 230, 8)]
    assert spread(batches) < 0.4 * spread(random_batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    shards = [list(LengthGroupedSampler(lengths, 8, seed=3, mega=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) and not {i for b in shards[0] for i in b} & {
        i for b in shards[1] for i in b
    }


def test_mega_one_gives_mixed_batches_as_accumulated_micro_batches_do():
    """Two prompt lengths (two tasks): the default groups them apart, mega=1 mixes them in most batches."""
    lengths = [30] * 100 + [40] * 100
    grouped = list(LengthGroupedSampler(lengths, batch_size=16, seed=0))
    mixed = list(LengthGroupedSampler(lengths, batch_size=16, seed=0, mega=1))
    assert sorted(i for b in mixed for i in b) == list(range(200))

    def n_mixed(batches):
        return sum(len({lengths[i] for i in b}) > 1 for b in batches)

    assert n_mixed(grouped) <= 1 and n_mixed(mixed) >= 10


def test_response_only_loss_equals_the_full_lm_loss():
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC)
    ids = torch.tensor([[5, USER, 6, ITEM, 7, 8], [9, 10, USER, 11, 12, 13]])
    labels = torch.full_like(ids, -100)
    labels[0, 4:] = ids[0, 4:]
    labels[1, 5:] = ids[1, 5:]
    users, items = torch.randn(2, D_REC), torch.randn(1, D_REC)
    fast = model(ids, user_vectors=users, item_vectors=items, labels=labels)
    full = model.lm(inputs_embeds=model.embed(ids, users, items), labels=labels)
    assert fast.logits.shape == (3, VOCAB)  # only the 3 labelled positions went through the head
    assert torch.allclose(fast.loss, full.loss, atol=1e-5)


def test_is_right_padded():
    assert is_right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not is_right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))  # a hole
    assert not is_right_padded(torch.tensor([[0, 0, 0]]))  # an empty row


@pytest.mark.parametrize("weighting", ["example", "token"])
def test_padded_batch_loss_equals_the_unpadded_examples_loss(weighting):
    """Right padding: the training forward drops the mask (causal attention keeps real tokens off the padding);
    left padding keeps it. Either way the batch loss is the loss of the examples run one by one."""
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, loss_weighting=weighting)
    rows = [[5, USER, 6, ITEM, 7, 8, 9], [9, 10, USER, 11], [12, ITEM, 13, 14, 15]]
    answers = [3, 2, 2]  # labelled tokens at the end of each example
    users = [torch.randn(1, D_REC), torch.randn(1, D_REC), torch.randn(0, D_REC)]
    items = [torch.randn(1, D_REC), torch.randn(0, D_REC), torch.randn(1, D_REC)]
    singles, n_tokens = [], []
    for ids, k, u, i in zip(rows, answers, users, items, strict=True):
        x = torch.tensor([ids])
        labels = torch.full_like(x, -100)
        labels[0, -k:] = x[0, -k:]
        singles.append(model(x, user_vectors=u, item_vectors=i, labels=labels).loss)
        n_tokens.append(k)
    if weighting == "example":
        expected = torch.stack(singles).mean()
    else:
        expected = sum(s * n for s, n in zip(singles, n_tokens, strict=True)) / sum(n_tokens)
    seen = []  # the attention mask the decoder receives
    model.lm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    for side in ("right", "left"):
        batch = collate(
            [
                {"input_ids": ids, "labels": [-100] * (len(ids) - k) + ids[-k:], "users": u, "items": i}
                for ids, k, u, i in zip(rows, answers, users, items, strict=True)
            ],
            pad_id=0,
            padding_side=side,
        )
        if side == "left":  # positions differ under left padding without position ids: only check it runs
            assert torch.isfinite(model(**batch).loss)
            assert seen[-1] is not None  # left padding keeps the mask
            continue
        assert torch.allclose(model(**batch).loss, expected, atol=1e-5)
        assert seen[-1] is None  # right padding: the fused causal path, no mask


def test_frozen_linears_in_bf16_give_the_same_autocast_loss_and_gradients():
    from peft import LoraConfig, get_peft_model

    def run(cast: bool):
        lm = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
        torch.manual_seed(1)
        model = RecExplainerLM(lm, USER, ITEM, D_REC)
        if cast:
            n = store_frozen_linears(model, torch.bfloat16)
            # 7 frozen projections x 2 layers; the tied head, LoRA and the projectors are left alone
            assert n == 14
            assert model.lm.get_output_embeddings().weight.dtype == torch.float32
            assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        ids = torch.tensor([[5, USER, 6, ITEM, 7, 8], [9, 10, USER, 11, 12, 13]])
        torch.manual_seed(2)
        users, items = torch.randn(2, D_REC), torch.randn(1, D_REC)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, user_vectors=users, item_vectors=items, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss, grads = run(False)
    loss_cast, grads_cast = run(True)
    assert torch.equal(loss, loss_cast)
    assert grads.keys() == grads_cast.keys()
    assert all(torch.equal(grads[n], grads_cast[n]) for n in grads)


def _batches_before_groups(lengths, batch_size, seed, mega, epoch=0):
    """The sampler's batches as written before ``groups`` existed (the reference for groups=None)."""
    import random

    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size, batches = batch_size * mega, []
    for start in range(0, len(order), size):
        chunk = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("mega", [1, 4, 50])
def test_sampler_without_groups_keeps_its_earlier_batches(mega):
    lengths = [((i * 37) % 101) + 1 for i in range(230)]
    assert list(LengthGroupedSampler(lengths, 8, seed=3, mega=mega)) == _batches_before_groups(
        lengths, 8, 3, mega
    )


@pytest.mark.parametrize("mega", [1, 8])
def test_paired_batching_puts_both_answers_of_a_prefix_in_one_batch(mega):
    from recexplainer.aligner.data import pair_key

    ids = [f"interest/train/u{u}-e3-{tag}" for u in range(60) for tag in ("pos", "neg")]
    ids += [f"retrieval/train/u{u}-e3" for u in range(45)]
    groups = [pair_key(i) for i in ids]
    assert groups[0] == groups[1] == "interest/train/u0-e3" and groups[-1] == ids[-1]
    lengths = [20 + (i * 7) % 13 for i in range(len(ids))]
    plain = LengthGroupedSampler(lengths, 16, seed=5, mega=mega)
    paired = LengthGroupedSampler(lengths, 16, seed=5, mega=mega, groups=groups)
    batches = list(paired)
    assert len(batches) == len(paired) == len(plain)
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    where = {i: n for n, b in enumerate(batches) for i in b}
    split = sum(where[2 * u] != where[2 * u + 1] for u in range(60))
    assert split <= len(batches) - 1  # a pair is split only at a cut between two batches
    plain_where = {i: n for n, b in enumerate(plain) for i in b}
    assert sum(plain_where[2 * u] != plain_where[2 * u + 1] for u in range(60)) > 40  # random: most split
    with pytest.raises(ValueError, match="group keys"):
        LengthGroupedSampler(lengths, 16, groups=groups[:-1])


@pytest.mark.slow
def test_pair_batching_changes_the_aligner_key(make_cfg):
    from recexplainer.pipeline import stage_folder

    off, default = make_cfg("aligner.pair_batching=false"), make_cfg()
    on = make_cfg("aligner.pair_batching=true")
    assert stage_folder(off, "aligner") == stage_folder(default, "aligner") != stage_folder(on, "aligner")


@pytest.mark.slow
def test_the_fp32_training_attention_is_in_the_aligner_key_only_when_on(make_cfg):
    from recexplainer.pipeline import stage_folder

    default, on = make_cfg(), make_cfg("aligner.cpu_attention_fp32=true")
    off = make_cfg("aligner.cpu_attention_fp32=false")
    assert stage_folder(default, "aligner") == stage_folder(off, "aligner") != stage_folder(on, "aligner")


def test_autocast_weights_give_the_same_outputs_and_restore_the_weights():
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(1)
    model = RecExplainerLM(lm, USER, ITEM, D_REC).eval()
    for p in model.parameters():  # LoRA must not be a no-op (B starts at zero)
        p.data += 0.05 * torch.randn_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[5, USER, 6, ITEM, 7, 8], [9, 10, USER, 11, 12, 13]])
    users, items = torch.randn(2, D_REC), torch.randn(1, D_REC)

    def outputs():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, user_vectors=users, item_vectors=items).logits
            tokens = model.generate(
                ids, user_vectors=users, item_vectors=items, max_new_tokens=6, do_sample=False, pad_token_id=0
            )
        return logits, tokens

    expected = outputs()
    with autocast_weights(model, torch.bfloat16) as n:
        # 7 projections x 2 layers, LoRA A and B on 2 x 2 modules, 2 x 2 projector layers; not the tied head
        assert n == 14 + 8 + 4
        assert model.lm.get_output_embeddings().weight.dtype == torch.float32
        got = outputs()
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], before[n]) for n in before)
    with autocast_weights(model, None) as n:
        assert n == 0


def _qkv(requires_grad: bool):
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, n, 5, 8) for n in (4, 2, 2))  # (B, heads, T, head dim): grouped-query attention
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def test_training_sdpa_runs_in_fp32_while_training_and_is_plain_sdpa_otherwise():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from recexplainer.aligner.model import _training_sdpa

    module = tiny_lm().model.layers[0].self_attn
    # inference under bf16 autocast: exactly transformers' sdpa
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = _qkv(False)
        plain = sdpa_attention_forward(module, q, k, v, None, scaling=0.35)[0]
        ours = _training_sdpa(module, q, k, v, None, scaling=0.35)[0]
    assert plain.dtype == ours.dtype == torch.bfloat16 and torch.equal(plain, ours)
    # training under bf16 autocast: the fp32 attention, handed back in bf16; gradients reach q, k and v
    q, k, v = _qkv(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _training_sdpa(module, q, k, v, None, scaling=0.35)[0]
    reference = sdpa_attention_forward(module, q.detach(), k.detach(), v.detach(), None, scaling=0.35)[0]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, reference.to(torch.bfloat16))
    out.float().sum().backward()
    assert all(
        t.grad is not None and t.grad.dtype == torch.float32 and t.grad.abs().sum() > 0 for t in (q, k, v)
    )
    # fp32 training: plain sdpa
    q, k, v = _qkv(True)
    assert torch.equal(
        _training_sdpa(module, q, k, v, None, scaling=0.35)[0],
        sdpa_attention_forward(module, q, k, v, None, scaling=0.35)[0],
    )


def test_fp32_training_attention_trains_like_bf16_attention_and_leaves_decoding_alone():
    from peft import LoraConfig, get_peft_model

    from recexplainer.aligner.model import FP32_TRAINING_SDPA, use_fp32_training_attention

    def build(switch: bool):
        lm = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(1)
        model = RecExplainerLM(lm, USER, ITEM, D_REC)
        if switch:
            assert use_fp32_training_attention(model.lm)
            assert model.lm.get_base_model().config._attn_implementation == FP32_TRAINING_SDPA
        return model

    ids = torch.tensor([[5, USER, 6, ITEM, 7, 8], [9, 10, USER, 11, 12, 13]])
    torch.manual_seed(2)
    users, items = torch.randn(2, D_REC), torch.randn(1, D_REC)
    results = []
    for switch in (False, True):
        model = build(switch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, user_vectors=users, item_vectors=items, labels=ids).loss
        loss.backward()
        grad = next(model.user_projector.parameters()).grad.clone()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            mask = torch.ones_like(ids)
            tokens = model.generate(ids, mask, users, items, max_new_tokens=4, do_sample=False)
        results.append((loss.detach(), grad, tokens))
    (loss, grad, tokens), (loss_fp32, grad_fp32, tokens_fp32) = results
    assert torch.isfinite(loss_fp32) and abs(float(loss - loss_fp32)) < 0.05 * float(loss)
    assert torch.allclose(grad, grad_fp32, rtol=0.1, atol=1e-3)
    assert torch.equal(tokens, tokens_fp32)  # decoding runs the plain sdpa path


def test_fp32_training_attention_leaves_other_attention_implementations_alone():
    from recexplainer.aligner.model import use_fp32_training_attention

    lm = tiny_lm()
    lm.set_attn_implementation("eager")
    assert not use_fp32_training_attention(lm)
    assert lm.config._attn_implementation == "eager"
