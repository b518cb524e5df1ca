"""Login side: the runs index, run and sweep references, status and logs, failure diagnosis, compare."""
