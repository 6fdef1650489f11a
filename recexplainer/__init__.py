"""RecExplainer: align an LLM with a trained recommender and make it explain the recommender's decisions."""

__version__ = "0.1.0"
