"""Explanations of the recommender's decisions: generation, LLM judges, counterfactual faithfulness."""
