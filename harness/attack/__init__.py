"""The revival attack: mask detection, matrix completion, sign retention, magnitudes, baselines."""
