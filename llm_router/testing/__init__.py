"""The harness the demo, the tests and the benchmarks share: a private redis-server, worker
processes, and the environment that points workers at the simulator. Nothing here runs in
production."""
