"""The evaluated models: building an entry's model, training it with its recipe, safetensors
checkpoints verified by sha256, and the benchmark's own transfer surrogates."""
