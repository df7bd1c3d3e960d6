"""What the recipe scripts share: setup, lock, validation, verification."""
