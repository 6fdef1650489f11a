"""The LLM's decision and explanation of (user, item) pairs, generated in batches through the evaluation's
predictor (its prompt encoding, vectors and decoder): the explain stage's own generation step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recexplainer.evaluate.decoding import yes_probability


def explain_batch(
    predictor: Any,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int,
    prefix: str = "",
    decisions: Sequence[float] | None = None,
    threshold: float = 0.5,
) -> list[tuple[float, str, float]]:
    """(P(yes) of the decision, explanation text, P(yes) of the first answer token after this prompt) per row.

    ``prefix`` (e.g. ``"{decision}, because"``) starts the answer with the model's own decision so that a
    model fine-tuned to answer tersely still explains; the returned text includes it. The decision is this
    prompt's P(yes), or ``decisions`` (one P(yes) per row, e.g. the model's answer to the task-3 question
    about the same pair) where given; the decision is yes when it exceeds ``threshold`` (the calibrated one, see
    :mod:`recexplainer.evaluate.calibration`). ``predictor``: an ``LLMPredictor``.
    """
    encoded = [predictor.encode(r) for r in rows]
    logits = predictor.decoder.next_token_logits(encoded)
    p_prompt = yes_probability(logits, predictor.yes_ids, predictor.no_ids).tolist()
    p_yes = p_prompt if decisions is None else [float(p) for p in decisions]
    starts = [prefix.replace("{decision}", "Yes" if p > threshold else "No") for p in p_yes]
    if prefix:
        for e, start in zip(encoded, starts, strict=True):
            e["input_ids"] = (
                list(e["input_ids"]) + predictor.tokenizer(start, add_special_tokens=False)["input_ids"]
            )
    texts = predictor.decoder.generate(encoded, max_new_tokens)
    return [
        (float(p), (start + t[0]).strip() if start else t[0].strip(), float(q))
        for p, start, t, q in zip(p_yes, starts, texts, p_prompt, strict=True)
    ]
