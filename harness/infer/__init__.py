"""Which concept an unlearned model erased, from its pruned entries alone (not an attack stage)."""
