"""The metrics `harness score` computes over image shards, each a torchmetrics object synced across processes."""
