"""What operators touch: the CLI, status and inspect, progress, logs."""
