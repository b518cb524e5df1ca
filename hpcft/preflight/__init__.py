"""Login side: "can this cluster run it?" -- one function per pre-flight rule (checks, trackers,
memcheck + estimate), the list that runs them (rules), and Slurm's answers asked for early (live)."""
