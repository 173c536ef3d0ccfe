"""Evaluation: image and audio metrics, the judges of the synthetic benchmark, the seed's
experiments and the report that renders their results."""
