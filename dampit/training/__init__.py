"""What the recipe scripts share: setup, lock, the run's data record,
validation, verification."""
