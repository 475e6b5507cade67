"""The miniature world: small models the harness builds itself so every stage runs on a CPU."""
