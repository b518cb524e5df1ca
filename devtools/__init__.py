"""hpcft developer tooling: the loopback hub, test-cluster scripts, run-folder helpers.
Used by the tests, the demo and the benchmarks; never shipped in the wheel."""
