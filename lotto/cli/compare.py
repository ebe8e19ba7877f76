"""`lotto compare`: placeholder, filled in by its issue."""
