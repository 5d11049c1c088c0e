"""The hallusionbench benchmark: its self-contained `evaluate` module (`hallusionbench.py`) and its loader."""
