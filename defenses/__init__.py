"""Defenses: architectures, training objectives and training recipes (no storage, no CLI)."""
