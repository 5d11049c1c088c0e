"""The vstar benchmark: its self-contained `evaluate` module (`vstar.py`) and its loader."""
