"""Model families behind one interface; importing this package registers them all."""

from dul_jax.tasks import (
    autoregressive,  # noqa: F401  (registers 'autoregressive')
    diffusion,  # noqa: F401  (registers 'diffusion')
    mae,  # noqa: F401  (registers 'mae')
    pixelcnn,  # noqa: F401  (registers 'pixelcnn')
)
from dul_jax.tasks.base import TASKS, Task, make_task  # noqa: F401
