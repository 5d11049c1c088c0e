"""The vsp benchmark: its self-contained `evaluate` module (`vsp.py`) and its loader."""
