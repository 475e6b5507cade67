"""Prompt-space attacks: concept inversion, UnlearnDiff, and the universal adversarial prefix."""
