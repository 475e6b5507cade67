"""Prompt-space attacks: concept inversion and adversarial prompts."""
