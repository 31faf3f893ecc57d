"""Model families behind one interface; importing this package registers them all."""

from dul_jax.tasks import autoregressive  # noqa: F401  (registers 'autoregressive')
from dul_jax.tasks.base import TASKS, Task, make_task  # noqa: F401
