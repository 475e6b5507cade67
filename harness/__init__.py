"""Concept-revival harness for pruning-based unlearning in text-to-image diffusion models."""

__version__ = "0.1.0"
