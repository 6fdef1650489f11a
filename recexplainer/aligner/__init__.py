"""Stage ``aligner``: the LLM with LoRA and the user / item projectors, trained on the alignment data."""
