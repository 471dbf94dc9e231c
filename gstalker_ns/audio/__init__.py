"""Audio input and per-frame audio features (the model's driving signal)."""
