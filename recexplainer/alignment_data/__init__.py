"""Stage ``alignment_data``: the tasks' prompts and targets, labelled by the trained recommender, and the
recommender's user / item vectors the aligner projects into the LLM."""
