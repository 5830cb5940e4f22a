"""``sentistream bench``: pipeline throughput and latency against baselines, in one run."""
