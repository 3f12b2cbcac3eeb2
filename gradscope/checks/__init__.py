"""Stage 3, checks: small pure functions from what the engine measured (plus roles) to ``Finding``s."""
