"""The revival attack (the paper's Sec. 4): mask detection, matrix completion, sign retention,
magnitudes, baselines and the sharded runner."""
