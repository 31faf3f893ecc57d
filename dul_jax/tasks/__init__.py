"""Model families behind one interface (base.py); each family module is imported by name when a
config asks for it, so importing this package loads none of them."""

from dul_jax.tasks.base import Task, builtin_families, make_task, task_class  # noqa: F401
