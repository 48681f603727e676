"""Local stand-ins for remote services, started by the tests and benchmarks (stdlib only)."""
