"""dampit.dataio."""
