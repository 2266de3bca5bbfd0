"""The evaluation engine: the protocol's attack cascade over chunks of samples, with success
decided by the engine (ball, box, a fresh forward pass, the detector rule), and the stages
outside the cascade (minimum-norm, L0 and probe extras)."""
