"""Loading causal LMs from local files (the bundled SmolLM2 GGUF, Hugging Face folders), offline."""
