"""``script:`` jobs: the user's own script, run unmodified under the worker's skeleton."""
