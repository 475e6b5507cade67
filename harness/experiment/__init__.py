"""The whole benchmark of one recipe: its plan of work and the stages that carry it out."""
