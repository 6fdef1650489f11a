"""Batched decoding for evaluation: left-padded prompts, KV-cached generation, yes/no scoring, and
constrained decoding over the catalog's titles.

Everything here works for both the aligned model (:class:`RecExplainerLM`, vectors injected at the
placeholders) and a plain causal LM (the unaligned baseline, prompts without placeholders): the prompt is
turned into ``inputs_embeds`` once and ``generate`` runs from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recexplainer.aligner import base_model, collate


class TitleTrie:
    """A prefix tree over tokenized catalog titles, for ``prefix_allowed_tokens_fn``.

    A single-title answer is a path from the root to a title's end, then end-of-sequence. A list answer
    (``separator`` given) may continue after a complete title with the separator's tokens and another
    title (tokenized with a leading space, as it follows the separator in running text), up to
    ``max_titles`` titles. Every decoded answer is therefore a real title (or list of titles).
    """

    END = -1  # key marking a complete title

    def __init__(
        self,
        titles: Sequence[str],
        tokenizer: Any,
        eos_token_id: int,
        separator: str | None = None,
        max_titles: int = 1,
    ):
        self.eos = eos_token_id
        self.max_titles = max_titles
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.first = self._build([encode(t) for t in titles if t])
        self.sep = encode(separator) if separator else []
        self.next = self._build([encode(" " + t) for t in titles if t]) if separator else self.first
        self.longest = max(self._depth(self.first), self._depth(self.next))

    @classmethod
    def _build(cls, sequences: list[list[int]]) -> dict:
        root: dict = {}
        for ids in sequences:
            node = root
            for token in ids:
                node = node.setdefault(token, {})
            node[cls.END] = {}
        return root

    @classmethod
    def _depth(cls, node: dict) -> int:
        children = [c for k, c in node.items() if k != cls.END]
        return 1 + max(cls._depth(c) for c in children) if children else 0

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens allowed after ``generated`` (the answer's tokens so far)."""
        node, n_titles, sep_pos = self.first, 0, None
        for token in generated:
            if sep_pos is not None:  # inside the separator
                if token != self.sep[sep_pos]:
                    return [self.eos]
                sep_pos += 1
                if sep_pos == len(self.sep):
                    node, sep_pos = self.next, None
                continue
            if token in node:
                node = node[token]
            elif self.END in node and self.sep and token == self.sep[0]:
                n_titles += 1
                sep_pos = 1
                if sep_pos == len(self.sep):
                    node, sep_pos = self.next, None
            else:
                return [self.eos]  # off the trie (or after eos): only eos
        if sep_pos is not None:
            return [self.sep[sep_pos]]
        allowed = [k for k in node if k != self.END]
        if self.END in node:
            allowed.append(self.eos)
            if self.sep and n_titles + 1 < self.max_titles:
                allowed.append(self.sep[0])
        return allowed or [self.eos]


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def contiguous_lm_head(lm: torch.nn.Module) -> None:
    """Make the LM head's input contiguous (once per model). ``generate`` runs the head on the last prompt
    position only, a strided (B, 1, H) view; with bf16 weights on the CPU, PyTorch multiplies such a view by
    expanding the (H, V) weight into a (B, H, V) copy (measured: 8.7 s of an 11 s task-1 batch, 80 beams x
    576 x 49,154 values). Under autocast the cast already yields a contiguous input, so fp32 and bf16-mixed
    never paid this; a contiguous (B, 1, H) input costs a few KB."""
    head = base_model(lm).get_output_embeddings()
    if head is not None and not getattr(head, "_recexplainer_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._recexplainer_contiguous = True


class Decoder:
    """Runs prompts (already formatted and tokenized) through a model in batches.

    ``model`` is a :class:`RecExplainerLM` (vectors injected) or a plain causal LM (``vectors`` ignored).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.aligned = hasattr(model, "embed")
        self.lm = model.lm if self.aligned else model
        contiguous_lm_head(self.lm)

    def _inputs(self, encoded: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collate(
            [{**e, "labels": [-100] * len(e["input_ids"])} for e in encoded],
            pad_id=self.pad_id,
            padding_side="left",
        )
        device = next(self.lm.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if self.aligned:
            embeds = self.model.embed(ids, batch["user_vectors"].to(device), batch["item_vectors"].to(device))
        else:
            embeds = self.lm.get_input_embeddings()(ids)
        return embeds, mask

    @torch.no_grad()
    def generate(
        self,
        encoded: list[dict[str, Any]],
        max_new_tokens: int,
        num_beams: int = 1,
        num_return_sequences: int = 1,
        trie: TitleTrie | None = None,
    ) -> list[list[str]]:
        """Decoded answers: ``num_return_sequences`` strings per example (greedy or beam search)."""
        embeds, mask = self._inputs(encoded)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        if num_beams > 1:
            # True: stop once num_beams hypotheses are finished. Not with a trie: where fewer continuations
            # are allowed than beams are live, Hugging Face's vectorized beam search fills the beams with
            # copies of finished ones (score ~ -1e9), those count as finished hypotheses and end the search
            # before longer titles finish (measured: task 1 HR@5 0.375 -> 0.44, 5 distinct titles instead of
            # 4.4, +11 % time). False is the canonical stopping rule: stop when no live beam can still win.
            kwargs["early_stopping"] = trie is None
        if trie is not None:
            kwargs["prefix_allowed_tokens_fn"] = lambda _b, ids: trie.allowed(ids.tolist())
        if self.aligned:
            kwargs["suppress_tokens"] = [self.model.user_token_id, self.model.item_token_id]
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if out.shape[1] > max_new_tokens:  # some versions return the prompt positions too
            out = out[:, -max_new_tokens:]
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        k = num_return_sequences
        return [texts[i * k : (i + 1) * k] for i in range(len(encoded))]

    @torch.no_grad()
    def next_token_logits(self, encoded: list[dict[str, Any]]) -> torch.Tensor:
        """(B, V) logits of the token after each prompt; the LM head runs on the last position only."""
        embeds, mask = self._inputs(encoded)
        base = base_model(self.lm)
        hidden = base.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return base.get_output_embeddings()(hidden[:, -1]).float()


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """First token ids of the spellings of an answer word ("yes", "Yes", " yes", " Yes"), deduplicated."""
    ids = []
    for text in (word, word.capitalize(), " " + word, " " + word.capitalize()):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokens and tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


def yes_probability(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """P(yes) among {yes, no} from next-token logits: softmax over the two answers' spellings."""
    yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
    no = torch.logsumexp(logits[:, no_ids], dim=-1)
    return torch.sigmoid(yes - no)
