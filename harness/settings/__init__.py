"""Each stage's settings, one module a stage (below the recipe that gathers them and the stages that take them)."""
