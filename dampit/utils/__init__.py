"""dampit.utils."""
