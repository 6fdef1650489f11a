"""Predictors: the (aligned or unaligned) LLM, and the baselines, behind one interface.

``predict(kind, rows)`` returns one prediction dict per example row: ``outputs`` (raw text, one string
per returned sequence), ``titles`` (parsed), ``items`` / ``items_fuzzy`` (matched ids, None where no
title matched) and ``p_yes`` for yes/no tasks. Baselines answer with item ids directly, through the same
scoring, so their numbers compare with the LLM's.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from recexplainer import tasks as kinds
from recexplainer.aligner import collate, encode
from recexplainer.aligner.data import pad_items
from recexplainer.evaluate.decoding import Decoder, TitleTrie, answer_token_ids, yes_probability
from recexplainer.text import DEFAULT_SEPARATOR, ChatFormatter, TitleIndex, split_mark


class LLMPredictor:
    """Answers with an LLM: beam search for retrieval, greedy decoding for the other title tasks,
    next-token yes/no probability for the interest tasks.

    ``aligned``: ``model`` is a RecExplainerLM and prompts keep their placeholders (vectors are injected);
    otherwise ``model`` is a plain causal LM and placeholders are removed from the prompt text.
    ``shots``: per task, training rows shown as earlier conversation turns (few-shot prompting).
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        formatter: ChatFormatter,
        index: TitleIndex,
        vectors: dict[str, torch.Tensor],
        aligned: bool,
        placeholders: tuple[str, str],
        num_beams: int = 5,
        beam_width: int | None = None,
        constrained: bool = False,
        max_new_tokens_margin: int = 8,
        fuzzy_cutoff: float = 0.85,
        shots: dict[str, list[dict[str, Any]]] | None = None,
        separator: str = DEFAULT_SEPARATOR,
    ):
        self.name, self.model, self.tokenizer, self.formatter = name, model, tokenizer, formatter
        self.index, self.aligned, self.placeholders = index, aligned, placeholders
        self.items, self.users = vectors["items"], vectors["users"]
        if getattr(model, "has_item_head", False):
            # on every process of a DDP run, not only where the head is evaluated: Lightning broadcasts the
            # module's buffers from rank 0, and a table set on one rank only makes those sizes disagree
            model.set_item_table(self.items)
        self.num_beams, self.constrained = num_beams, constrained
        self.beam_width = max(beam_width or num_beams, num_beams)
        self.margin, self.fuzzy_cutoff = max_new_tokens_margin, fuzzy_cutoff
        self.shots = shots or {}
        self.separator = separator  # prompt.title_separator: the one the training targets were joined with
        self.decoder = Decoder(model, tokenizer)
        self.yes_ids, self.no_ids = answer_token_ids(tokenizer, "yes"), answer_token_ids(tokenizer, "no")
        catalog = [t for t in index.titles[1:] if t]
        lengths = [len(tokenizer(" " + t, add_special_tokens=False)["input_ids"]) for t in catalog]
        self.longest_title = max(lengths) if lengths else 1
        self.sep_tokens = len(tokenizer(split_mark(separator), add_special_tokens=False)["input_ids"])
        self._tries: dict[int, TitleTrie] = {}
        self.kinds = set(kinds.evaluable())

    # -- prompts -------------------------------------------------------------------------------------
    def _strip(self, text: str) -> str:
        for placeholder in self.placeholders:
            text = text.replace(placeholder + " ", "").replace(placeholder, "")
        return text

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        shots = [(self._text(s["prompt"]), s["target"]) for s in self.shots.get(row["task"], [])]
        if self.aligned and not shots:
            e = encode(
                row,
                self.formatter,
                self.tokenizer,
                self.model.user_token_id,
                self.model.item_token_id,
                with_target=False,
            )
            return {"input_ids": e.input_ids, "users": self.users[e.user_rows], "items": self.items[e.items]}
        text = self.formatter(self._text(row["prompt"]), shots=shots)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        empty = torch.empty(0, self.items.shape[1])
        return {"input_ids": ids, "users": empty, "items": empty}

    def _text(self, prompt: str) -> str:
        return prompt if self.aligned else self._strip(prompt)

    def prompt_length(self, row: dict[str, Any]) -> int:
        """Sort key grouping prompts of similar length into a batch: characters, a close proxy for tokens
        that costs no second tokenisation (each prompt is tokenised once, in the batch that runs it)."""
        return len(self._text(row["prompt"]))

    # -- decoding ------------------------------------------------------------------------------------
    def max_new_tokens(self, n_titles: int) -> int:
        """Enough for ``n_titles`` of the catalog's longest title with separators, plus a margin."""
        return n_titles * self.longest_title + (n_titles - 1) * (self.sep_tokens + 1) + self.margin

    def _trie(self, n_titles: int) -> TitleTrie:
        if n_titles not in self._tries:
            self._tries[n_titles] = TitleTrie(
                self.index.titles[1:],
                self.tokenizer,
                self.tokenizer.eos_token_id,
                separator=split_mark(self.separator) if n_titles > 1 else None,
                max_titles=n_titles,
            )
        return self._tries[n_titles]

    def predict(self, kind: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.aligned and self.shots and any(self.shots.values()):
            raise ValueError(
                "few-shot prompts are for the unaligned model (evaluation.few_shot needs model=unaligned)"
            )
        encoded = [self.encode(r) for r in rows]
        task = kinds.get(kind)
        if task.answer == "yes_no":
            p_yes = yes_probability(self.decoder.next_token_logits(encoded), self.yes_ids, self.no_ids)
            return [{"outputs": [], "titles": [], "items": [], "p_yes": float(p)} for p in p_yes]
        n_titles = max(task.titles_asked(r) for r in rows)
        beams = self.beam_width if task.beam_search else 1
        outputs = self.decoder.generate(
            encoded,
            self.max_new_tokens(n_titles),
            num_beams=beams,
            num_return_sequences=beams,
            trie=self._trie(n_titles) if self.constrained else None,
        )
        return [self.parse(kind, texts, row) for texts, row in zip(outputs, rows, strict=True)]

    def parse(self, kind: str, texts: Sequence[str], row: dict[str, Any] | None = None) -> dict[str, Any]:
        """One example's prediction from its generated texts (beam-search kinds: one per beam, in order);
        ``row``, the example, where its labels change how the reference scoring reads the answer."""
        task = kinds.get(kind)
        titles = task.parse(texts, self.separator, self.num_beams)
        # the reference scoring's reading (TaskKind.strict_answers); exact match after strip().lower()
        pieces = task.strict_answers(texts, self.separator, row)
        return {
            "outputs": list(texts),  # every returned sequence (retrieval: beam_width of them)
            "titles": titles,
            "items": [self.index.match(t) for t in titles],
            "items_fuzzy": [self.index.fuzzy(t, self.fuzzy_cutoff) for t in titles],
            "items_strict": [self.index.strict_match(t) for t in pieces],
        }


class ItemHeadPredictor:
    """Answers read off the aligned LLM's item head (``aligner.item_head_weight`` > 0): the hidden state at the end
    of the prompt, where the answer would start, scored against every item (the head's space), the prefix's
    items excluded as in the recommender's own ranking. Answers with item ids, like the baselines, so
    exact-match scoring applies unchanged.

    - task 1 (``retrieval``): the five best items, as titles;
    - task 2 (``ranking``): the shown candidates in the order of their head scores;
    - task 3 (``interest``, ``interest_hard``): P(yes) is the share of the other items the asked item outscores
      (its percentile in the head's ranking, 1 at the top): the recommender says yes to its top band and no to
      its bottom band, so the reference rule (P(yes) >= 0.5) says yes to the upper half and a calibrated
      threshold (:mod:`recexplainer.evaluate.calibration`) moves the cut to where the recommender's bands meet.

    The head reads the model without autocast, in its weights' own dtype (fp32 unless a "-true" precision cast
    them), in the evaluate and the explain stage alike, and its thresholds are fit in those same numerics.
    """

    autocast = False  # what runs the predictor leaves autocast off (the LLM predictor runs under it)
    NUMERICS = "the weights' own dtype, no autocast"

    def __init__(self, llm: LLMPredictor, batch_size: int = 16):
        model = llm.model
        if not getattr(model, "has_item_head", False):
            raise ValueError("the aligned model has no item head (aligner.item_head_weight is 0)")
        self.llm, self.batch_size = llm, batch_size
        self.name = f"{llm.name}_item_head"
        self.kinds = ("retrieval", "ranking", "interest", "interest_hard")
        self.titles = llm.index.titles  # the item table is set by the LLMPredictor

    @property
    def model(self) -> torch.nn.Module:
        return self.llm.model

    @property
    def users(self) -> torch.Tensor:
        """The user vectors the prompts are encoded with (the LLM predictor's; calibration swaps them)."""
        return self.llm.users

    @users.setter
    def users(self, value: torch.Tensor) -> None:
        self.llm.users = value

    def prompt_length(self, row: dict[str, Any]) -> int:
        return self.llm.prompt_length(row)

    @torch.no_grad()
    def scores(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """(len(rows), N + 1) item-head scores, -inf for the padding item and each row's prefix items."""
        model = self.llm.model
        device = next(model.parameters()).device
        encoded = [self.llm.encode(r) for r in rows]
        batch = collate(
            [{**e, "labels": [-100] * len(e["input_ids"])} for e in encoded],
            pad_id=self.llm.decoder.pad_id,
            padding_side="right",  # causal attention: a real token never sees the padding after it
        )
        hidden = model.head_hidden(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["user_vectors"].to(device),
            batch["item_vectors"].to(device),
        )
        exclude = pad_items([r.get("history", []) for r in rows])
        return model.item_scores(hidden, exclude.to(device)).float().cpu()

    @staticmethod
    def percentile(scores: torch.Tensor, items: Sequence[int]) -> list[float]:
        """Per row, the share of the other rankable items (finite scores) scored below ``items[row]`` (ties count
        half): 1 for the head's top item, 0 for its last, 0 for an item the row excludes."""
        value = scores.gather(1, torch.as_tensor(list(items), dtype=torch.long)[:, None])  # (n, 1)
        finite = torch.isfinite(scores)
        others = finite.sum(1) - 1
        below = ((scores < value) & finite).sum(1)
        ties = (scores == value).sum(1) - 1
        share = (below + ties / 2) / others.clamp(min=1)
        return torch.where(torch.isfinite(value[:, 0]) & (others > 0), share, 0.0).tolist()

    def predict(self, kind: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if kind not in self.kinds:
            raise ValueError(f"the item head answers {', '.join(self.kinds)}, not {kind}")
        from recexplainer.tasks.retrieval import K

        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            scores = self.scores(chunk)
            if kinds.get(kind).answer == "yes_no":
                p_yes = self.percentile(scores, [r["labels"]["item"] for r in chunk])
                out.extend({"outputs": [], "titles": [], "items": [], "p_yes": p} for p in p_yes)
                continue
            if kind == "ranking":
                answers = [
                    sorted(r["labels"]["shown"], key=lambda i, s=s: (-float(s[i]), i))
                    for r, s in zip(chunk, scores, strict=True)
                ]
            else:
                answers = scores.topk(K, dim=1).indices.tolist()
            for items in answers:
                titles = [self.titles[i] for i in items]
                out.append(
                    {
                        "outputs": titles,
                        "titles": titles,
                        "items": items,
                        "items_fuzzy": items,
                        "items_strict": items,
                    }
                )
        return out


class BaselinePredictor:
    """Non-LLM baselines answering with item ids; what each answers per task lives with the task kind
    (``answer_<baseline>`` methods in :mod:`recexplainer.tasks`), this class holds what they are fit on.

    - ``random``: uniformly random items / orders / yes-probabilities (seeded per example).
    - ``popularity``: items by training interaction count (the paper's popularity baseline); for the
      interest tasks the item-popularity threshold rule (threshold fit on the training examples).
    - ``top1_frequency``: the items most often the recommender's top-1 in the training labels (its choices
      are concentrated, so this is the stronger retrieval baseline).
    - ``item_knn``: an interpretable surrogate: item-based nearest neighbours (cosine over training
      co-occurrences) scores candidates by their summed similarity to the history.
    - ``student``: a small SASRec distilled from the target's top-1 choices (``scorer`` gives its scores;
      see :mod:`recexplainer.evaluate.student`).
    For yes/no kinds, ``item_knn`` and ``student`` say yes when the item's score reaches a threshold fit on
    the training examples, like the popularity rule.
    """

    NAMES = ("random", "popularity", "top1_frequency", "item_knn", "student")

    def __init__(
        self,
        name: str,
        titles: Sequence[str],
        popularity: np.ndarray,
        train_sequences: Sequence[np.ndarray],
        train_rows: dict[str, list[dict[str, Any]]],
        seed: int,
        scorer: Callable[[Sequence[int]], torch.Tensor] | None = None,
    ):
        if name not in self.NAMES:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(self.NAMES)}")
        if name == "student" and scorer is None:
            raise ValueError("the student baseline needs a scorer (the distilled model)")
        self.scorer = scorer
        self.name, self.titles, self.seed = name, list(titles), seed
        self.kinds = tuple(k for k, kind in kinds.evaluable().items() if name in kind.baselines())
        self.n_items = len(titles) - 1
        self.popularity = np.asarray(popularity, dtype=np.float64).copy()
        self.popularity[0] = -np.inf
        self.by_popularity = np.argsort(-self.popularity, kind="stable")
        self.threshold: float | None = None
        if name == "top1_frequency":  # the training labels of the kinds it answers: the recommender's top-1
            counts = Counter(r["labels"]["item"] for k in self.kinds for r in train_rows.get(k, []))
            if not counts:
                raise ValueError(
                    f"the top1_frequency baseline needs training examples of {sorted(self.kinds)}"
                )
            freq = np.zeros(self.n_items + 1)
            for item, c in counts.items():
                freq[item] = c
            # frequency first, popularity breaks ties (and orders items never chosen)
            self.by_top1 = np.lexsort((-self.popularity, -freq))
        if name == "item_knn":
            self._fit_knn(train_sequences)
        if name in ("popularity", "item_knn", "student"):
            yes_no = [r for k in self.kinds if kinds.get(k).answer == "yes_no" for r in train_rows.get(k, [])]
            if yes_no:
                self.threshold = self._fit_threshold(yes_no)

    # -- fitting -------------------------------------------------------------------------------------
    def _fit_knn(self, sequences: Sequence[np.ndarray]) -> None:
        rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences)]) if sequences else []
        cols = np.concatenate(sequences) if sequences else []
        x = torch.zeros(len(sequences), self.n_items + 1)
        x[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = 1.0
        self._users_of = x.T.contiguous()  # (I, U) binary
        self._norm = self._users_of.sum(1).clamp(min=1).sqrt()  # sqrt(#users per item)

    def similarity(self, items: Sequence[int]) -> torch.Tensor:
        """(len(items), I) cosine similarity of the given items to every item."""
        idx = torch.as_tensor(list(items), dtype=torch.long)
        co = self._users_of[idx] @ self._users_of.T  # (H, I)
        sim = co / (self._norm[idx, None] * self._norm[None, :])
        sim[:, 0] = 0.0
        return sim

    def scores(self, row: dict[str, Any]) -> torch.Tensor:
        """(I,) the surrogate's score of every item for the row's history (item_knn: summed similarity)."""
        history = self.history_list(row)
        if self.scorer is not None:
            return self.scorer(history)
        return self.similarity(history).sum(0) if len(history) else torch.zeros(self.n_items + 1)

    def _item_value(self, row: dict[str, Any]) -> float:
        item = row["labels"]["item"]
        if self.name == "popularity":
            return float(self.popularity[item])
        return float(self.scores(row)[item])

    def _fit_threshold(self, rows: list[dict[str, Any]]) -> float:
        """The threshold on the item's value that maximises training accuracy of 'yes iff value >= t'."""
        values = np.array([self._item_value(r) for r in rows])
        yes = np.array([r["labels"]["answer"] == "yes" for r in rows])
        candidates = np.unique(values)
        accuracy = [((values >= t) == yes).mean() for t in candidates]
        return float(candidates[int(np.argmax(accuracy))])

    # -- what the task kinds' answer_<baseline> methods use ------------------------------------------
    def rng(self, row: dict[str, Any]) -> np.random.Generator:
        """The example's own random stream (the same answer whatever the batch)."""
        return np.random.default_rng([self.seed, zlib.crc32(row["id"].encode())])

    @staticmethod
    def history_list(row: dict[str, Any]) -> list[int]:
        return [int(i) for i in row.get("history", [])]

    def history(self, row: dict[str, Any]) -> set[int]:
        """The items the user has consumed (excluded from recommendations)."""
        return set(self.history_list(row))

    @staticmethod
    def top(order: Sequence[int] | np.ndarray, exclude: set[int], k: int) -> list[int]:
        """The first ``k`` items of ``order`` not in ``exclude`` (item 0, the padding id, never)."""
        out = []
        for item in order:
            item = int(item)
            if item and item not in exclude:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def order_by_scores(self, row: dict[str, Any]) -> list[int]:
        """Every item by the surrogate's score for the row's history, popularity breaking ties."""
        scores = self.scores(row)
        return torch.argsort(scores + torch.as_tensor(self.popularity) * 1e-9, descending=True).tolist()

    def says_yes(self, row: dict[str, Any]) -> bool:
        """The threshold rule: yes when the item's value reaches the threshold fit on training."""
        return self.threshold is not None and self._item_value(row) >= self.threshold

    def predict(self, kind: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        task = kinds.get(kind)
        predictions = []
        for row in rows:
            answer = task.baseline_answer(self, row)
            if isinstance(answer, float):
                predictions.append({"outputs": [], "titles": [], "items": [], "p_yes": answer})
            else:
                titles = [self.titles[i] for i in answer]
                predictions.append(
                    {
                        "outputs": titles,
                        "titles": titles,
                        "items": answer,
                        "items_fuzzy": answer,
                        "items_strict": answer,
                    }
                )
        return predictions
