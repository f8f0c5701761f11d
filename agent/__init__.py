"""The probenet agent: runs probes on schedule and streams results to collectors."""
