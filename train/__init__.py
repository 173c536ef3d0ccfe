"""Command-line programs: ``python -m train.<name>``."""
