"""Login side: job file -> validated job -> sbatch script -> the queue. ``pipeline`` (one path for
single jobs and sweeps), ``render`` (the script), ``sweep`` (job arrays), ``scow`` and ``rerun``
(SCOW portal placement and reruns from a saved job)."""
