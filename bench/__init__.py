"""Dukat's benchmarks (`make bench`): the gateway against baselines measured in the same run."""
