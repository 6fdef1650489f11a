"""Stage ``evaluate``: how well the LLM reproduces the recommender (tasks 1-3, 6, item recovery / similarity)
next to non-LLM baselines on the same examples."""
