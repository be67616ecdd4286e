"""Evaluation: declared benchmarks, the checkpoint runner, pure scoring, and the MLflow report."""
