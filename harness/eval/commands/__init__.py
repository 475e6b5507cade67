"""The evaluation stages' commands: `harness data`, `harness generate`, `harness score`."""
