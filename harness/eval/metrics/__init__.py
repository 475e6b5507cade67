"""The metrics `harness score` computes over image shards, each synced across processes."""

METRICS = ("accuracy", "clip", "fid", "nudenet")
