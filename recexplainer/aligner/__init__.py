"""Stage ``aligner``: the LLM with LoRA and the user / item projectors, trained on the alignment data.

What the downstream stages (evaluate, explain) use, and nothing else of this package: ``setup.load`` (a
trained aligner from its stage folder) and ``setup.load_base_llm`` (the configured LLM without it), and from
here :func:`encode` and :func:`collate` (prompts with their vectors, exactly as the aligner was trained on
them), :func:`base_model` and :func:`autocast_weights` (running the model at inference).
"""

from recexplainer.aligner.data import collate, encode
from recexplainer.aligner.model import autocast_weights, base_model

__all__ = ["autocast_weights", "base_model", "collate", "encode"]
