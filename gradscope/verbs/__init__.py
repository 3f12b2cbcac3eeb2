"""Stage 4, verbs: what a user asks for (check, grads, verify, overfit), composed from data, model, engine and checks.

Every command of the CLI is one call here, so the Python API does all the CLI does.
"""
