"""Login side: the one place that runs Slurm commands (sbatch, squeue, scontrol, sacct, sinfo)."""
