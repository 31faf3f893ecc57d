"""Configs sized for TPU pods and GPU nodes (`dul-jax compile` and `plan` need no data for them)."""
