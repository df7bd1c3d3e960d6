"""dampit.metrics."""
