"""Prompt suites, generation, image shards, metrics and reports."""
