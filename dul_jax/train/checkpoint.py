"""Orbax checkpoints of the train state together with the data iterator's position.

Saves are asynchronous (training continues while files are written) and collective across
processes; restore places every array straight into the shardings of the current mesh, so a
checkpoint written on one mesh loads on any other. Each save records a checksum of every array
(`digest`), checked on restore: orbax keeps none, and a flipped bit would restore silently.
"""

import errno
import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dul_jax import storage
from dul_jax.errors import UserError, WorldFailed


def _state_handler(replica_parallel: bool) -> ocp.PyTreeCheckpointHandler:
    """orbax's pytree handler (the files StandardSave writes), with replica-parallel saving of
    replicated arrays chosen here rather than in orbax's process-wide type registry."""
    th = ocp.type_handlers
    arrays = th.ArrayHandler(use_replica_parallel=replica_parallel)
    registry = th.create_type_handler_registry(*(
        (t, arrays if t is jax.Array else th.get_type_handler(t)) for t in th.supported_types()))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _restore_args(abstract_state) -> ocp.args.PyTreeRestore:
    """Every leaf as a jax.Array in its sharding, or on the first local device where it has
    none (as orbax's StandardRestore does)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placed = jax.tree.map(lambda a: a if getattr(a, 'sharding', None) is not None else
                          jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_state)
    return ocp.args.PyTreeRestore(
        placed, restore_args=ocp.checkpoint_utils.construct_restore_args(placed))


class Checkpointer:
    """An orbax CheckpointManager on `directory`: the train state, and the grain iterator's
    position where one is given. Keeps the newest `keep` steps; `async_save` writes in the
    background (`wait` or `close` finishes the writes).

    `replica_parallel` splits the writing of each replicated array among its replicas (orbax's
    default): faster saves of big replicated states on many hosts, but the first save compiles
    a slice per array and device (58.9 s against 0.44 s for 100 small arrays on 8 CPU devices;
    benchmarks/checkpoint_save.py). Off, each is written whole by its first replica."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 replica_parallel: bool = False):
        self.directory = storage.path(directory)   # local or gs://: orbax takes epath
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)   # what a failed or killed save left half-written
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state = _state_handler(replica_parallel)
        handlers.add('state', ocp.args.PyTreeSave, state)
        handlers.add('state', ocp.args.PyTreeRestore, state)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             handler_registry=handlers)
        self.saving = None                     # the step being written in the background
        self.committed = self.latest_step()    # the newest step known to be on disk
        self.failed = False                    # a failed save was raised (WorldFailed)

    def latest_step(self) -> int | None:
        """The newest step saved in the directory, or None if there is none."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step saved in the directory, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Save `state` (global arrays), its `digest` and the iterator's position as `step`;
        collective, so every process calls it. Returns whether a save was started (orbax's save
        policy may skip a step unless `force`). WorldFailed if the save before it failed."""
        self.wait_if_done(step)
        if self.saving is not None:   # orbax finishes it before starting this one: see how it ends
            self.wait(step)
        ongoing = sys.exc_info()[1]
        items = {'state': ocp.args.PyTreeSave(state),
                 'digest': ocp.args.JsonSave(digest(state))}
        if data_iterator is not None:
            import grain  # only runs that read data through grain need it
            items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 (orbax re-raises a failed background save here)
            raise self._failed(self.saving or step, step, e, ongoing) from None
        if started:
            self.saving = step
        return started

    def wait_if_done(self, step: int) -> None:
        """Note a background save that has finished; WorldFailed, naming the last good checkpoint
        and `step` (where training stops), if it failed. Cheap enough to call every step."""
        if self.saving is None:
            return
        done = not self.manager.is_saving_in_progress()
        ongoing = sys.exc_info()[1]
        try:   # once done, waiting costs nothing and raises what the finishing thread met
            self.manager.wait_until_finished() if done else self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 (whatever the store or the disk raised)
            raise self._failed(self.saving, step, e, ongoing) from None
        if done:
            self.committed, self.saving = self.saving, None

    def _failed(self, saving: int, step: int, error: Exception,
                ongoing: BaseException | None = None) -> WorldFailed:
        """The one sentence for a failed save; `ongoing` is the exception that was being handled
        when the save was waited for (not its cause: see _cause)."""
        self.saving, self.failed = None, True
        cause = _cause(error, ongoing)
        full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) or \
            'No space left' in cause
        # a write answered "not found": the folder, or on an object store the bucket, is gone
        gone = cause.startswith('FileNotFoundError') or 'NOT_FOUND' in cause
        last = f'step {self.committed}' if self.committed is not None else 'none yet'
        todo = ('free space there and rerun the same command to resume from it' if full else
                'check that it still exists (a deleted bucket takes its checkpoints with it), '
                'recreate it if not, and rerun the same command to resume from what is there'
                if gone else 'check that it can be written (space, permissions, the store '
                'reachable) and rerun the same command to resume from it')
        return WorldFailed(f'saving checkpoint {saving} in {self.directory} failed ({cause}); '
                           f'training stopped at step {step}, and the last good checkpoint is '
                           f'{last}: {todo}.')

    def restore(self, abstract_state, data_iterator=None, step: int | None = None,
                fall_back: bool = True, set_aside: bool = True):
        """The state at `step` (default: latest), in abstract_state's shardings; the iterator, if
        given, is moved to where it was when the checkpoint was saved. `restored_step` says which.

        With no `step` and `fall_back`, a checkpoint whose files are damaged (unreadable, though
        not recorded with other shapes than abstract_state's) is moved to DIRECTORY_corrupt/ with
        a warning and the next newest is tried, so an automatic restart does not crash on it
        again; without `set_aside` (eval and sample, which hold no lock on the workdir) it is
        only skipped. A checkpoint recorded with other shapes is never moved: that is a config
        mismatch.
        """
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise UserError(f'no checkpoint in {self.directory}; train first or pass the workdir '
                            'of a run that saved one.')
        for candidate in steps:
            state, damage = self._restore_step(candidate, abstract_state, data_iterator)
            if damage is None:
                self.restored_step = candidate
                return state
            if step is not None or not fall_back:
                raise UserError(f'checkpoint {self.directory}/{candidate} could not be restored '
                                f'({damage}); it is damaged or was saved with another config, so '
                                'restore it with the config it was saved with or use another '
                                '--workdir.')
            if set_aside:
                self._set_aside(candidate, damage)
            elif jax.process_index() == 0:
                print(f'warning: checkpoint {self.directory}/{candidate} could not be restored '
                      f'({damage}); trying the next newest (the next `train` sets it aside).',
                      file=sys.stderr)
        kept = f'each is kept in {self.directory}_corrupt/' if set_aside else 'each left in place'
        raise UserError(f'none of the checkpoints {steps} in {self.directory} could be restored '
                        f'({kept}, its cause logged); copy an intact checkpoint back into the '
                        'directory to resume from it, or train again to start from step 0.')

    def _restore_step(self, step: int, abstract_state, data_iterator):
        """(state, None), or (None, why the files are damaged); UserError if the checkpoint
        records other shapes. Every process gets the same answer (one that fails fails all), so
        all resume from the same step."""
        # The bytes first, a window at a time (see _unreadable), as orbax reads both the record
        # and the arrays concurrently; then the shapes in the record, before any array is read.
        mismatch, damage = None, _unreadable(self.directory / str(step) / 'state')
        if jax.process_count() > 1:   # each read only its share: all must agree (collective)
            found = multihost_utils.process_allgather(np.array(damage is not None, np.int32))
            if damage is None and found.any():
                damage = 'another process could not read its part of it'
        if damage is None:
            mismatch, damage = self._compare_shapes(step, abstract_state)
        if mismatch is None and damage is None:
            try:
                items = {'state': _restore_args(abstract_state)}
                if (self.directory / str(step) / 'digest').exists():  # older ones have none
                    items['digest'] = ocp.args.JsonRestore()
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                damage = _digest_mismatch(restored['state'], restored.get('digest'))
                if data_iterator is not None and damage is None:
                    restore_position(self.directory / str(step) / 'data', data_iterator)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 (orbax raises many types for unreadable files)
                damage = _cause(e)
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(
                np.array([mismatch is not None, damage is not None], np.int32))
            if mismatch is None and flags[:, 0].any():
                mismatch = 'another process found other shapes in it'
            if mismatch is None and damage is None and flags[:, 1].any():
                damage = 'another process could not read its part of it'
        if mismatch is not None:
            raise UserError(f'checkpoint {self.directory}/{step} was {mismatch}; restore it with '
                            'the model config it was saved with, or use another --workdir.')
        return (None, damage) if damage is not None else (restored['state'], None)

    def _compare_shapes(self, step: int, abstract_state) -> tuple[str | None, str | None]:
        """(mismatch, damage): 'saved with KEY SHAPE DTYPE, where ...' if the checkpoint records
        other arrays than abstract_state's; why its record is unreadable if it is (damage)."""
        def flat(tree):  # {'params.head.kernel': 'float32[32, 17]'}; '' where none is recorded
            return {'.'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
                             for k in path): (f'{leaf.dtype}{list(leaf.shape)}' if hasattr(
                                 leaf, 'shape') and hasattr(leaf, 'dtype') else '')
                    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
        try:
            recorded = ocp.StandardCheckpointHandler().metadata(
                self.directory / str(step) / 'state').tree
        except Exception as e:  # noqa: BLE001 (orbax raises many types for unreadable records)
            return None, _cause(e)
        saved, wanted = flat(recorded), flat(abstract_state)
        for key in sorted(set(saved) | set(wanted)):
            if saved.get(key) != wanted.get(key) and '' not in (saved.get(key), wanted.get(key)):
                return (f'saved with {key} {saved.get(key, "absent")}, where this config has '
                        f'{wanted.get(key, "absent")}'), None
        return None, None

    def _set_aside(self, step: int, cause: str) -> None:
        """Move a damaged step out of the orbax directory (process 0; never deleted), so a later
        save of the same step number does not collide with it."""
        folder = self.directory.parent / f'{self.directory.name}_corrupt'
        aside = folder / str(step)
        if jax.process_index() == 0:
            n = 0
            while aside.exists():   # a step damaged twice: keep both
                n += 1
                aside = folder / f'{step}.{n}'
            folder.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(aside)
            print(f'warning: checkpoint {self.directory}/{step} could not be restored ({cause}); '
                  f'moved it to {aside} and trying the next newest.', file=sys.stderr)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'dul_jax set aside checkpoint {step}')
        self.manager.reload()

    def wait(self, step: int | None = None) -> None:
        """Block until pending asynchronous saves are on disk; WorldFailed if one failed (training
        stopped at `step`, default the step being saved)."""
        ongoing = sys.exc_info()[1]
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (whatever the store or the disk raised)
            raise self._failed(self.saving, self.saving if step is None else step, e,
                               ongoing) from None
        if self.saving is not None:
            self.committed, self.saving = self.saving, None

    def close(self) -> None:
        """Finish pending asynchronous writes, then release the manager (WorldFailed as `wait`).
        Once a failed save has been raised, what else the store raises while closing (orbax's
        step metadata of that save, written in its own thread) is dropped: it was said."""
        try:
            if not self.failed:
                self.wait()
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001 (whatever the store or the disk raised)
            if not self.failed:
                last = f'step {self.committed}' if self.committed is not None else 'none'
                raise WorldFailed(f'closing the checkpoints in {self.directory} failed '
                                  f'({_cause(e)}); the last good checkpoint is {last}: check that '
                                  'it can be written, and rerun the same command.') from None
        if self.failed:   # orbax stops waiting at a save's first failed write, not its others:
            _join_orbax_threads()   # let them end (and log) before the failure is said

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process received SIGTERM (multi-process sync point)."""
        return self.manager.reached_preemption(step)


def _bits(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 values (one per element; two per 64-bit element)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _sums(arrays):
    # sum of bits(x_i) * (2i + 1) mod 2^32: exact, so the same on any mesh; an odd weight keeps
    # every single flipped bit visible, and the position weights see swapped elements
    def one(x):
        bits = _bits(x).reshape(-1)
        weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
        return jnp.sum(bits * weights, dtype=jnp.uint32)
    return [one(x) for x in arrays]


def digest(tree) -> dict[str, int]:
    """{path of each array in `tree`: its checksum}, the same for a tree on any mesh or number
    of processes (a collective: every process calls it)."""
    leaves = [(jax.tree_util.keystr(path), leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
              if isinstance(leaf, jax.Array)]
    sums = jax.device_get(_sums([leaf for _, leaf in leaves]))
    return {name: int(value) for (name, _), value in zip(leaves, sums, strict=True)}


def _digest_mismatch(state, recorded: dict | None) -> str | None:
    """Which restored array differs from the checksum recorded when it was saved, or None."""
    if recorded is None:
        return None
    found = digest(state)
    wrong = [name for name, value in recorded.items() if found.get(name, value) != value]
    if wrong:
        return (f'{len(wrong)} array(s), first {wrong[0]}, differ from the checksum recorded '
                'when it was saved')
    return None


def restore_position(data_dir, data_iterator) -> None:
    """Move the data iterator to where the checkpoint's processes were. The pipeline's position
    is global (every process is at the same global batch; data/pipeline.py), so a run saved by
    another number of processes resumes at the same global batch: no example is skipped or
    repeated. Processes that were saved at different positions are refused in one sentence."""
    mine = data_dir / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    saved = sorted(data_dir.glob('process_*-of-*.json'))
    if not saved:
        raise FileNotFoundError(f'{data_dir} holds no data position')
    texts = {path.name: path.read_text() for path in ([mine] if mine.exists() else saved)}
    states = {name: json.loads(text) for name, text in texts.items()}
    if len({json.dumps(state, sort_keys=True) for state in states.values()}) > 1:
        raise UserError(f'the processes that saved {data_dir.parent} were at different data '
                        f'positions ({states}); resume it with the process count it was saved '
                        'with.')
    if not mine.exists() and jax.process_index() == 0:
        print(f'warning: {data_dir.parent} was saved by {len(saved)} process(es) and is resumed '
              f'by {jax.process_count()}; the data position (the same global batch for all of '
              'them) carries over.', file=sys.stderr)
    data_iterator.set_state(next(iter(states.values())))
    if hasattr(data_iterator, 'start_prefetch'):   # as grain's own restore does
        data_iterator.start_prefetch()


def _unreadable(state_dir, window: int = 64) -> str | None:
    """Why a stored value of the checkpoint's OCDBT store cannot be read, or None. Read first,
    `window` values at a time through TensorStore's own futures: orbax's concurrent restore, when
    one read fails, leaves the others to finish into its closed event loop, a traceback each.
    Each process reads its share of the values."""
    import tensorstore as ts
    if not (state_dir / 'manifest.ocdbt').exists():   # not an OCDBT checkpoint: orbax alone
        return None
    url = os.fspath(state_dir)
    if '://' not in url:
        url = 'file://' + os.path.abspath(url)
    try:
        store = ts.KvStore.open({'driver': 'ocdbt', 'base': url.rstrip('/') + '/'}).result()
        keys = store.list().result()[jax.process_index()::jax.process_count()]
        for start in range(0, len(keys), window):
            for read in [store.read(key) for key in keys[start:start + window]]:
                read.result()
    except Exception as e:  # noqa: BLE001 (TensorStore raises ValueError and others)
        return _cause(e)
    return None


def _cause(error: Exception, ongoing: BaseException | None = None) -> str:
    """The first line of the innermost exception: orbax wraps TensorStore's precise message
    ("OUT_OF_RANGE: Error reading ...") in a generic one with a long spec. The walk stops at
    `ongoing`, an exception that was being handled when the one met was raised: Python makes it
    the innermost one's context, and it is not the cause (a metrics upload that failed before
    the checkpoint it was written with was waited for)."""
    while (error.__cause__ or error.__context__) not in (None, ongoing):
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0][:200]}' if text else type(error).__name__


def _join_orbax_threads(timeout_s: float = 30.0) -> None:
    """Wait (at most `timeout_s` in all) for the threads orbax started that are still running:
    the other writes of a save whose first failed write orbax has already raised."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        mine = thread is threading.current_thread()
        if type(thread).__module__.startswith('orbax.') and not mine:
            threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


def restore_state(directory: str, abstract_state, step: int | None = None):
    """The state saved in `directory` (default: the latest step), for eval and sampling."""
    ckpt = Checkpointer(directory, async_save=False)
    try:
        return ckpt.restore(abstract_state, step=step, set_aside=False)
    finally:
        ckpt.close()

