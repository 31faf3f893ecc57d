"""Accounting for scaling studies: parameter counts and training FLOPs."""
