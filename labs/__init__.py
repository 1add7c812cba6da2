"""Network-namespace labs: topologies with real SIP peers for tests, demo and benchmarks."""
