"""dampit.cli."""
