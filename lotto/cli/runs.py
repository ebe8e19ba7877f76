"""`lotto runs`: placeholder, filled in by its issue."""
