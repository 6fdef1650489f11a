"""The LLM that reads the recommender's vectors: any causal LM composed with two projectors.

Placeholder tokens (``<user>``, ``<item>``) mark where vectors go. One vectorized step per kind: a boolean
mask of the placeholder positions and ``masked_scatter`` of the projected vectors, added to the token
embedding (``add``, the public code) or replacing it (``replace``, LLaRA / XRec); the decoder is then
called with ``inputs_embeds``. The language model is wrapped, not subclassed, so a PEFT wrapper works too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from recexplainer.aligner.projector import build_projector

INJECTIONS = ("add", "replace")
# token: mean over all labelled tokens of the batch (long answers dominate); example: mean per example, then
# over examples (a one-token yes/no answer weighs as much as a nine-title list)
LOSS_WEIGHTINGS = ("token", "example")
# where the item head scores the items: against their projected embeddings in the LLM's space, or (the hidden
# state mapped to the recommender's width) against the recommender's own item embeddings, or both (two heads
# trained side by side, read in the recommender's space)
ITEM_HEAD_SPACES = ("projected", "recommender", "both")
IGNORE_INDEX = -100


def _head_parameters(space: str, hidden: int, d_rec: int) -> tuple[nn.Linear, nn.Parameter]:
    """An item head's query map and log scale. projected: H -> H, identity at the start, scale 1 / sqrt(H);
    recommender: H -> d_rec, zero at the start (the head leaves the LLM untouched until it has learnt
    something), scale 1 (a query equal to the user vector reproduces the recommender's scores)."""
    if space == "recommender":
        query = nn.Linear(hidden, d_rec, bias=False)
        nn.init.zeros_(query.weight)
        start = 0.0
    else:
        query = nn.Linear(hidden, hidden, bias=False)
        nn.init.eye_(query.weight)
        start = math.log(1.0 / math.sqrt(hidden))
    # shape (1,), not a 0-dim scalar: DeepSpeed broadcasts every parameter viewed as bytes, which a 0-dim bf16
    # tensor cannot be
    return query, nn.Parameter(torch.full((1,), start))


def base_model(lm: nn.Module) -> nn.Module:
    """The underlying Hugging Face model of a (possibly PEFT-wrapped) causal LM."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (padding at the end only, positions counted from 0 in every row)."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all() and mask[:, 0].all())


def _castable_linears(model: nn.Module, dtype: torch.dtype, frozen_only: bool) -> list[nn.Linear]:
    """Linear layers whose weight autocast casts to ``dtype`` at each call: not yet in ``dtype``, not tied to
    an input embedding (the lookup is not autocast), frozen unless ``frozen_only`` is False."""
    tied = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and not (frozen_only and m.weight.requires_grad)
        and id(m.weight) not in tied
        and m.weight.dtype != dtype
    ]


def store_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weights of the linear layers in ``dtype``; returns how many were converted.

    Under bf16 autocast every linear layer casts its fp32 weight to bf16 at each call, forward and backward;
    a frozen weight stored in bf16 gives the same products without those copies (and half the memory).
    Trainable weights (LoRA, projectors) stay fp32 master weights; embeddings, norms and a head tied to the
    input embeddings are left as they are."""
    modules = _castable_linears(model, dtype, frozen_only=True)
    for module in modules:
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
    return len(modules)


@contextlib.contextmanager
def autocast_weights(model: nn.Module | None, dtype: torch.dtype | None) -> Iterator[int]:
    """Inference under ``dtype`` autocast: inside the block every linear weight (LoRA and projectors
    included; not a head tied to the input embeddings) is stored in ``dtype``, so decoding gives the same
    tokens and probabilities without casting each weight at every call; afterwards the original weights are back, on the module's current device. Every
    use of the model inside the block must run under autocast. Yields how many layers were converted;
    ``dtype`` (or ``model``) None does nothing."""
    modules = [] if dtype is None or model is None else _castable_linears(model, dtype, frozen_only=False)
    saved = [(m, m.weight.data, None if m.bias is None else m.bias.data) for m in modules]
    try:
        for module, weight, bias in saved:
            module.weight.data = weight.to(dtype)
            if bias is not None:
                module.bias.data = bias.to(dtype)
        yield len(saved)
    finally:
        for module, weight, bias in saved:
            module.weight.data = weight.to(module.weight.device)
            if bias is not None:
                module.bias.data = bias.to(module.bias.device)


# the name under which the fp32-backward attention is registered with transformers' attention interfaces
FP32_TRAINING_SDPA = "recexplainer_sdpa_fp32_training"


def _training_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run in float32 while a CPU trains under reduced precision.

    torch's flash-attention backward on a CPU is several times slower in bf16 than in fp32 on short sequences
    (``make bench-aligner-step``: the ``fp32_attention`` variant). With gradients on, on a CPU, under bf16 / fp16 autocast or with
    reduced-precision inputs, q, k and v are upcast and the attention runs in fp32 (more exact, not less);
    elsewhere (inference, GPUs, fp32 training) this is exactly transformers' ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != torch.float32
    low = autocast or query.dtype in (torch.bfloat16, torch.float16)
    if not (low and torch.is_grad_enabled() and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dtype = torch.get_autocast_dtype("cpu") if autocast else query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(dtype), weights


def use_fp32_training_attention(lm: nn.Module) -> bool:
    """Switch a Hugging Face causal LM that uses ``sdpa`` attention to :func:`_training_sdpa`; returns whether
    it did (models on another attention implementation, or that cannot switch, are left as they are)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    model = base_model(lm)
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_TRAINING_SDPA, _training_sdpa)
    AttentionMaskInterface.register(FP32_TRAINING_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(FP32_TRAINING_SDPA)
    return config._attn_implementation == FP32_TRAINING_SDPA


@dataclass
class AlignerOutput(CausalLMOutput):
    """The LM's output plus, with an item head, its distillation loss (already inside ``loss``), the
    next-token loss alone and the head's KL divergence from the recommender's distribution (for logging:
    the cross-entropy includes the target's own entropy, several nats over ~1,700 items)."""

    item_head_loss: torch.Tensor | None = None
    item_head_kl: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    title_distill_loss: torch.Tensor | None = None


class PlaceholderMismatch(ValueError):
    """The number of placeholder tokens in a batch differs from the number of vectors given."""


class RecExplainerLM(nn.Module):
    """Causal LM + user / item projectors. Vectors are given in placeholder order (row-major over the batch)."""

    def __init__(
        self,
        lm: nn.Module,
        user_token_id: int,
        item_token_id: int,
        d_rec: int,
        projector: str = "mlp2x_gelu",
        injection: str = "add",
        loss_weighting: str = "token",
        item_head_weight: float = 0.0,
        item_head_temperature: float = 1.0,
        title_distill_weight: float = 0.0,
        title_distill_temperature: float = 1.0,
        item_head_space: str = "projected",
    ):
        super().__init__()
        if item_head_space not in ITEM_HEAD_SPACES:
            raise ValueError(f"item_head_space must be one of {ITEM_HEAD_SPACES}, got {item_head_space!r}")
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        if item_head_weight < 0 or item_head_temperature <= 0:
            raise ValueError(
                f"item_head_weight must be >= 0 and item_head_temperature > 0, got {item_head_weight} and "
                f"{item_head_temperature}"
            )
        if title_distill_weight < 0 or title_distill_temperature <= 0:
            raise ValueError(
                f"title_distill_weight must be >= 0 and title_distill_temperature > 0, got {title_distill_weight} "
                f"and {title_distill_temperature}"
            )
        self.loss_weighting = loss_weighting
        self.lm = lm
        self.user_token_id, self.item_token_id = user_token_id, item_token_id
        self.injection = injection
        table = lm.get_input_embeddings()
        hidden = table.embedding_dim
        self.d_rec = d_rec
        self.user_projector = build_projector(projector, d_rec, hidden)
        self.item_projector = build_projector(projector, d_rec, hidden)
        # Trainable embedding rows of the two placeholder tokens, kept apart from the (frozen) table so
        # that training them costs two rows of optimizer state, not the whole vocabulary.
        rows = table.weight[[user_token_id, item_token_id]].detach().clone().float()
        self.placeholder_embeddings = nn.Parameter(rows)  # (2, H)
        # Optional item head (item_head_weight > 0), trained towards the recommender's own softmax over the
        # items from the hidden state that predicts an answer's first token. item_head_space "projected": that
        # state, mapped by a square matrix (identity at the start), is scored against every item's projected
        # embedding (the item projector's output: tied to what the prompts inject) times a learnt scale.
        # "recommender": it is mapped into the recommender's space (H -> d_rec, zero at the start: the head
        # leaves the LLM untouched until it has learnt something) and scored against the recommender's own item
        # embeddings, as the recommender scores a user vector; the head then has the recommender's scoring
        # to reproduce, not a second copy of it in the LLM's space.
        # "both": the recommender-space head (item_query / item_logit_scale, the one read) and a projected one
        # (projected_query / projected_logit_scale) trained side by side on the same hidden states, each loss
        # at the full weight: the projected head keeps training the item projector towards the recommender's
        # item space (the prompts' injected items), the other gives the readout.
        self.item_head_weight, self.item_head_temperature = item_head_weight, item_head_temperature
        self.item_head_space = item_head_space
        if item_head_weight > 0:
            readout = "projected" if item_head_space == "projected" else "recommender"
            self.item_query, self.item_logit_scale = _head_parameters(readout, hidden, d_rec)
            if item_head_space == "both":
                self.projected_query, self.projected_logit_scale = _head_parameters(
                    "projected", hidden, d_rec
                )
        self.register_buffer("item_table", torch.empty(0, d_rec), persistent=False)  # (N + 1, d_rec)
        # Optional title distillation (title_distill_weight > 0): on each task-1 example, at every position of
        # the target title, the LM's next-token distribution is also trained towards the recommender's softmax
        # over the items, summed per next token over the items whose title shares the answer's tokens so far
        # (a trie over the catalog's tokenized titles): the recommender's whole ranking as a target for the
        # generated title, not its top-1 alone. Training only; the titles' tokens are set by the stage.
        self.title_distill_weight = title_distill_weight
        self.title_distill_temperature = title_distill_temperature
        # (N + 1, L) token ids
        self.register_buffer("title_tokens", torch.empty(0, 0, dtype=torch.long), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "item_logit_scale"  # aligners saved with the 0-dim scale load as shape (1,)
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _inject(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        vectors: torch.Tensor | None,
        projector: nn.Module,
        name: str,
    ) -> torch.Tensor:
        n = int(mask.sum())
        given = 0 if vectors is None else vectors.shape[0]
        if n != given:
            raise PlaceholderMismatch(
                f"the batch has {n} {name} placeholder token(s) but {given} {name} vector(s) were given; "
                "was a prompt truncated, or does a title contain the placeholder text?"
            )
        if n == 0:
            # no placeholder in this batch: still put the projector in the graph (a zero contribution), so
            # that every trainable parameter gets a gradient each step and DDP's all-reduce stays in step
            # across processes whose batches differ (a batch without users on one rank only would hang)
            if not torch.is_grad_enabled():
                return embeds
            param = next(projector.parameters(), None)
            if param is None:
                return embeds
            empty = embeds.new_zeros((0, self.d_rec), dtype=param.dtype)
            return embeds + projector(empty).sum().to(embeds.dtype) * 0
        projected = projector(vectors.to(next(projector.parameters(), embeds).dtype)).to(
            embeds.dtype
        )  # (n, H)
        mask3 = mask.unsqueeze(-1)  # (B, T, 1)
        if self.injection == "add":
            projected = embeds[mask] + projected
        return embeds.masked_scatter(mask3, projected)

    def embed(
        self,
        input_ids: torch.Tensor,
        user_vectors: torch.Tensor | None = None,
        item_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T), user_vectors (U, d_rec), item_vectors (I, d_rec) -> inputs_embeds (B, T, H)."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        for k, token_id in enumerate((self.user_token_id, self.item_token_id)):
            mask = input_ids == token_id
            row = self.placeholder_embeddings[k].to(embeds.dtype)
            if mask.any():
                embeds = torch.where(mask.unsqueeze(-1), row, embeds)
            elif torch.is_grad_enabled():  # in the graph every step (see _inject): DDP needs every gradient
                embeds = embeds + row.sum() * 0
        embeds = self._inject(
            embeds, input_ids == self.user_token_id, user_vectors, self.user_projector, "user"
        )
        return self._inject(
            embeds, input_ids == self.item_token_id, item_vectors, self.item_projector, "item"
        )

    @property
    def has_item_head(self) -> bool:
        return self.item_head_weight > 0

    def set_item_table(self, items: torch.Tensor) -> None:
        """The recommender's item embeddings (N + 1, d_rec), row 0 padding: what the item head scores."""
        if items.ndim != 2 or items.shape[1] != self.d_rec:
            raise ValueError(
                f"item table of shape {tuple(items.shape)}; expected (n_items + 1, {self.d_rec})"
            )
        device = self.placeholder_embeddings.device
        self.item_table = items.detach().to(device=device, dtype=torch.float32)

    def item_scores(self, hidden: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Item-head scores: hidden states (n, H) -> (n, N + 1) logits over the items; the padding row and the
        items in ``exclude`` (n, K; 0 entries are padding) get -inf."""
        if not self.has_item_head:
            raise RuntimeError("this aligner has no item head (aligner.item_head_weight is 0)")
        if self.item_table.shape[0] == 0:
            raise RuntimeError("the item head needs the recommender's item table: call set_item_table first")
        space, query_map, scale = self._heads()[0]
        return self._head_scores(hidden, exclude, space, query_map, scale)

    def _heads(self) -> list[tuple[str, nn.Linear, nn.Parameter]]:
        """The item heads as (space, query map, log scale), the one read first."""
        if self.item_head_space == "projected":
            return [("projected", self.item_query, self.item_logit_scale)]
        heads = [("recommender", self.item_query, self.item_logit_scale)]
        if self.item_head_space == "both":
            heads.append(("projected", self.projected_query, self.projected_logit_scale))
        return heads

    def _head_scores(
        self, hidden, exclude, space: str, query_map: nn.Linear, scale: nn.Parameter
    ) -> torch.Tensor:
        """One head's scores: ``query_map(hidden)`` against the recommender's item embeddings (``space``
        "recommender") or their projections (``"projected"``), times ``exp(scale)``; masked as item_scores."""
        if space == "recommender":
            keys = self.item_table.to(query_map.weight.dtype)
        else:
            keys = self.item_projector(self.item_table.to(next(self.item_projector.parameters()).dtype))
        query = query_map(hidden.to(keys.dtype))
        logits = (query @ keys.T).float() * scale.exp()  # (n, N + 1)
        return _mask_items(logits, exclude)

    def recommender_distribution(
        self, users: torch.Tensor, exclude: torch.Tensor | None, temperature: float | None = None
    ) -> torch.Tensor:
        """The item head's target: softmax over the items of the recommender's scores (user vector . item
        embedding) divided by the temperature (``item_head_temperature`` unless given), with the items it may
        not return at zero."""
        temperature = self.item_head_temperature if temperature is None else temperature
        scores = users.float() @ self.item_table.float().T / temperature
        return torch.softmax(_mask_items(scores, exclude), dim=-1)

    @property
    def distills_titles(self) -> bool:
        return self.title_distill_weight > 0

    @property
    def needs_recommender_targets(self) -> bool:
        """Whether task-1 examples carry the recommender's user vector and exclusions (item head or title
        distillation), and the model needs the item table."""
        return self.has_item_head or self.distills_titles

    def set_title_tokens(self, tokens: torch.Tensor) -> None:
        """Each item's title as the training targets tokenize it (title + end of sequence): (N + 1, L) token ids,
        -1 after each title's end; row 0 (the padding item) all -1. What title distillation sums over."""
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"title tokens must be a 2-d long tensor, got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if self.item_table.shape[0] and tokens.shape[0] != self.item_table.shape[0]:
            raise ValueError(
                f"title tokens for {tokens.shape[0]} items; the item table has {self.item_table.shape[0]} rows"
            )
        self.title_tokens = tokens.to(self.placeholder_embeddings.device)

    def _title_distill_loss(
        self, logits: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor, rows, users, exclude
    ) -> torch.Tensor | None:
        """Cross-entropy from the recommender's title distribution to the LM's, per answer position of each
        head row (task-1 example), averaged per example then over the rows; None without a usable row.

        ``logits`` (N_labelled, V) are the LM's at the labelled positions in row-major order. At answer position
        t the target is the recommender's probability mass of the items whose title starts with the answer's
        first t tokens, summed per next token and renormalised; positions where the answer has left every
        catalog title (e.g. a list's separator) are skipped."""
        if rows is None or rows.numel() == 0 or self.title_tokens.numel() == 0:
            return None
        titles = self.title_tokens  # (N + 1, L)
        counts = keep.sum(1)
        starts = counts.cumsum(0) - counts
        probs = self.recommender_distribution(users, exclude, self.title_distill_temperature)  # (R, N + 1)
        losses = []
        for k, b in enumerate(rows.tolist()):
            m = min(int(counts[b]), titles.shape[1])
            if m == 0:
                continue
            answer = targets[b][keep[b]][:m]  # (m,)
            tokens = titles[:, :m]
            # match[j, t]: title j's first t + 1 tokens are the answer's; prefix[j, t]: its first t tokens are
            match = torch.cumprod((tokens == answer).long(), dim=1).bool()
            prefix = torch.cat([torch.ones_like(match[:, :1]), match[:, :-1]], dim=1)
            mass = probs[k].unsqueeze(1) * (prefix & (tokens >= 0))  # (N + 1, m): items still in the trie
            total = mass.sum(0)  # (m,)
            usable = match.any(0) & (total > 0)
            if not usable.any():
                continue
            start = int(starts[b])
            log_p = torch.log_softmax(logits[start : start + m].float(), dim=-1)  # (m, V)
            picked = log_p.gather(1, tokens.clamp_min(0).T)  # (m, N + 1): each item's next token
            per_position = -(mass.T * picked).sum(1) / total.clamp_min(1e-30)
            losses.append(per_position[usable].mean())
        return torch.stack(losses).mean() if losses else None

    def _item_head_loss(
        self, hidden: torch.Tensor, keep: torch.Tensor, rows, users, exclude
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-entropy from the recommender's item distribution to the head's, at each head row's first
        answer position (the hidden state that predicts the answer's first token), and the KL divergence
        (the same minus the target's entropy; detached, None without head rows)."""
        if rows is None or rows.numel() == 0:
            # still in the graph (a zero contribution): every trainable parameter gets a gradient each step,
            # which DDP needs (see _inject)
            dummy = sum(query_map.weight.sum() + scale.sum() for _, query_map, scale in self._heads())
            return dummy * 0.0, None
        first = keep[rows].float().argmax(dim=1)  # the first labelled position of each head row
        states = hidden[rows, first]
        target = self.recommender_distribution(users, exclude)
        heads = [self._head_scores(states, exclude, *head) for head in self._heads()]
        loss = 0.0
        for logits in heads:
            log_p = torch.log_softmax(logits, dim=-1).masked_fill(target == 0, 0.0)
            loss = loss + -(target * log_p).sum(-1).mean()
        with torch.no_grad():
            entropy = -(target * torch.log(target.clamp_min(1e-30))).sum(-1).mean()
        return loss, loss.detach() - len(heads) * entropy

    def head_hidden(self, input_ids, attention_mask, user_vectors=None, item_vectors=None) -> torch.Tensor:
        """The last hidden state at each row's last real token (right-padded prompts): (B, H)."""
        embeds = self.embed(input_ids, user_vectors, item_vectors)
        hidden = (
            base_model(self.lm)
            .get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
            .last_hidden_state
        )
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(
        self,
        input_ids,
        attention_mask=None,
        user_vectors=None,
        item_vectors=None,
        labels=None,
        head_rows=None,
        head_users=None,
        head_exclude=None,
        head_item=None,
        head_title=None,
        **kwargs,
    ):
        """Without labels: the LM's output (logits for every position). With labels: the mean next-token loss
        over the labelled positions, computing the LM head only there (responses are a few tokens of a
        long prompt, and the head over a large vocabulary dominates small models' cost); with an item head,
        plus ``item_head_weight`` x its loss on the rows ``head_rows`` (their recommender user vectors
        ``head_users`` and the items the recommender may not return ``head_exclude``, 0-padded); ``head_item`` /
        ``head_title`` (bool per head row, None: all) say which of those rows train the item head and which answer
        with a title (title distillation)."""
        embeds = self.embed(input_ids, user_vectors, item_vectors)
        if labels is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        if attention_mask is not None and is_right_padded(attention_mask):
            # causal attention never lets a real token see the padding after it, so the mask changes nothing
            # at the labelled positions; without it the attention takes the fused causal kernel (~10 % faster
            # training steps on a CPU)
            attention_mask = None
        base = base_model(self.lm)
        hidden = base.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # no KV cache in training
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V)
        if not keep.any():
            loss = hidden.sum() * 0.0
        elif self.loss_weighting == "token":
            loss = F.cross_entropy(logits, targets[keep])
        else:
            per_token = F.cross_entropy(logits, targets[keep], reduction="none")  # (N,)
            rows = keep.nonzero()[:, 0]  # the example of each labelled position
            sums = torch.zeros(keep.shape[0], device=per_token.device).index_add(0, rows, per_token)
            counts = torch.bincount(rows, minlength=keep.shape[0])
            has = counts > 0
            loss = (sums[has] / counts[has]).mean()
        head_loss = head_kl = lm_loss = distill_loss = None
        if self.needs_recommender_targets:
            lm_loss = loss.detach()
        if self.has_item_head:
            head_loss, head_kl = self._item_head_loss(
                hidden[:, :-1], keep, *_select(head_item, head_rows, head_users, head_exclude)
            )
            loss = loss + self.item_head_weight * head_loss
        if self.distills_titles:
            distill_loss = self._title_distill_loss(
                logits, keep, targets, *_select(head_title, head_rows, head_users, head_exclude)
            )
            if distill_loss is not None:
                loss = loss + self.title_distill_weight * distill_loss
        return AlignerOutput(
            loss=loss,
            logits=logits,
            item_head_loss=head_loss,
            item_head_kl=head_kl,
            lm_loss=lm_loss,
            title_distill_loss=None if distill_loss is None else distill_loss.detach(),
        )

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, user_vectors=None, item_vectors=None, **kwargs):
        """Generate from left-padded prompts; returns only the new tokens (B, new)."""
        embeds = self.embed(input_ids, user_vectors, item_vectors)
        kwargs.setdefault("suppress_tokens", [self.user_token_id, self.item_token_id])
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


def _select(which, rows, users, exclude):
    """The head rows (and their user vectors and exclusions) that ``which`` (bool per row; None: all) keeps."""
    if which is None or rows is None or bool(which.all()):
        return rows, users, exclude
    which = which.to(rows.device)
    return (
        rows[which],
        users[which.to(users.device)],
        None if exclude is None else exclude[which.to(exclude.device)],
    )


def _mask_items(scores: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """-inf for the padding item (column 0) and for the items in ``exclude`` (n, K; 0 entries: none)."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    if exclude is not None and exclude.numel():
        scores = scores.scatter(1, exclude.to(scores.device), float("-inf"))
    return scores
