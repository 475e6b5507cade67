"""Unlearning methods (one module each), their registry, and the Gaussian-obfuscation defense."""
