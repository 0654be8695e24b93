"""Per-token log-probs: the engine (one forward pass) and the resumable checkpoint sweep."""
