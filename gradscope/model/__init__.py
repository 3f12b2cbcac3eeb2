"""Stage 1, model: the user's model and tokenizer from a local directory (adapters included), and the user's own
code."""
