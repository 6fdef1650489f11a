"""Stage ``aligner``: the LLM with LoRA and the user / item projectors, trained on the alignment data.

What the downstream stages (evaluate, explain) use, and nothing else of this package: :func:`load` (a trained
aligner from its stage folder), :func:`load_base_llm` (the configured LLM without the aligner), :func:`encode`
and :func:`collate` (prompts with their vectors, exactly as the aligner was trained on them),
:func:`base_model` and :func:`autocast_weights` (running the model at inference).
"""

from recexplainer.aligner.data import collate, encode
from recexplainer.aligner.model import autocast_weights, base_model
from recexplainer.aligner.setup import load, load_base_llm

__all__ = ["autocast_weights", "base_model", "collate", "encode", "load", "load_base_llm"]
