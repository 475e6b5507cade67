"""The benchmark as SLURM jobs: sbatch scripts from slurm/ templates, chained by dependencies."""
