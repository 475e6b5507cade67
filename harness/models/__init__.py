"""Loading and saving checkpoints and pipelines; naming target layers; the miniature zoo."""
