"""dampit.inference."""
