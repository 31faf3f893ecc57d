"""Orbax checkpoints of the train state together with the data iterator's position.

Saves are asynchronous (training continues while files are written) and collective across
processes; restore places every array straight into the shardings of the current mesh, so a
checkpoint written on one mesh loads on any other.
"""

import orbax.checkpoint as ocp

from dul_jax import storage
from dul_jax.errors import UserError


class Checkpointer:
    """An orbax CheckpointManager on `directory`: the train state, and the grain iterator's
    position where one is given. Keeps the newest `keep` steps; `async_save` writes in the
    background (`wait` or `close` finishes the writes)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = storage.path(directory)   # local or gs://: orbax takes epath
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest step saved in the directory, or None if there is none."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step saved in the directory, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Save `state` (global arrays) and the iterator's position as `step`; collective, so
        every process calls it. Returns whether a save was started (orbax's save policy may
        skip a step unless `force`)."""
        items = {'state': ocp.args.StandardSave(state)}
        if data_iterator is not None:
            import grain  # only runs that read data through grain need it
            items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """The state at `step` (default: latest), in abstract_state's shardings; the iterator, if
        given, is moved to where it was when the checkpoint was saved."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f'no checkpoint in {self.directory}; train first or pass the workdir '
                            'of a run that saved one.')
        items = {'state': ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            import grain
            items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for unreadable or mismatched files
            raise UserError(f'checkpoint {self.directory}/{step} could not be restored '
                            f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is corrupt '
                            'or from a different model config, so delete it or use another '
                            '--workdir.') from e
        return restored['state']

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending asynchronous writes, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process received SIGTERM (multi-process sync point)."""
        return self.manager.reached_preemption(step)


def restore_state(directory: str, abstract_state, step: int | None = None):
    """The state saved in `directory` (default: the latest step), for eval and sampling."""
    ckpt = Checkpointer(directory, async_save=False)
    try:
        return ckpt.restore(abstract_state, step=step)
    finally:
        ckpt.close()

