"""dampit.lobes."""
