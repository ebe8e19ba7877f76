"""`lotto search`: placeholder, filled in by its issue."""
