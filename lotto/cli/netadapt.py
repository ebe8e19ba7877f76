"""`lotto netadapt`: placeholder, filled in by its issue."""
