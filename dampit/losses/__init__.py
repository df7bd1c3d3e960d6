"""dampit.losses."""
