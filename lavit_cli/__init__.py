"""The `lavit` command-line application: one verb per step of the pipeline, and the demo that runs them all.

It sits above the four packages (`lavit_hf`, `datasets_scripts`, `trainer`, `evaluate_metrics`) and is imported by
none of them.
"""
