"""The `dul-jax` command.

  dul-jax train  --config experiments/configs/NAME.py --workdir DIR [--config.KEY=VALUE ...]
                 [--debug]
  dul-jax eval   --workdir DIR [--config.KEY=VALUE ...]
  dul-jax sample --workdir DIR [--num N] [--seed S]
  dul-jax compress   --workdir DIR --input FILE --output FILE   # lossless, with the run's model
  dul-jax decompress --workdir DIR --input FILE --output FILE
  dul-jax export --workdir DIR --output FILE.msgpack [--step N]   # eval params + config + spec
  dul-jax inspect --config experiments/configs/NAME.py [--config.KEY=VALUE ...]
  dul-jax compile --config C [--topology v5e:16x16|h100:8] [--save FILE] [--config.KEY=VALUE ...]
  dul-jax plan   --config C --chips N --kind v5e [--max-compiles K] [--config.KEY=VALUE ...]
  dul-jax sweep  --sweep experiments/scaling/NAME.py --workdir DIR [--shard I/N] [--no-report]
  dul-jax cooldown --workdir STABLE --steps K1,K2 --decay-steps D [--out DIR] [--config.KEY=V ...]

A mistake the user can fix (bad config, missing data, unusable checkpoint, an unwritable folder)
prints one sentence and exits with status 2; a diverged run, a full disk or a failed checkpoint
write prints one sentence and exits with status 1.
"""

import argparse
import logging
import os
import re
import sys

from dul_jax import __version__
from dul_jax.errors import UserError, WorldFailed, from_os_error

CONFIG_HELP = ("a config file with get_config(), or a shipped config's name such as demo "
               '(`dul-jax configs` lists them)')


# The words every command that takes --config.KEY=VALUE uses to say so: one that reads CONFIG,
# and one that reads the config a run kept.
OVERRIDES_HELP = 'Any config value can be set after the flags as --config.KEY=VALUE'
RUN_OVERRIDES_HELP = "with the run's own config; --config.KEY=VALUE overrides it"
WORKDIR_HELP = 'the run folder (local or gs://): checkpoints, metrics, samples'
RUN_HELP = 'the folder of a trained run (local or gs://)'
_SHIPPED_NAMES = ('demo', 'igpt_digits', 'gated_pixelcnn_digits', 'mae_digits', 'ddpm_unet_digits',
                  'vae_digits', 'vqvae_digits', 'flow_digits', 'gan_digits', 'contrastive_digits',
                  'tiny_shakespeare_char')
_SHIPPED = ('shipped configs (`dul-jax configs` says what each is):\n  ' +
            '\n  '.join(_SHIPPED_NAMES) + '\n  ... and MNIST, pod-sized and scaling configs')


class _KeepIndented(argparse.HelpFormatter):
    """Wraps prose to the terminal but keeps indented lines (the shipped configs) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return '\n'.join(indent + line if line.startswith(' ') else fill(line, width, indent)
                         for line in text.splitlines())


def _config_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that reads --config CONFIG; its help ends with the shipped configs."""
    parser = sub.add_parser(name, epilog=_SHIPPED, formatter_class=_KeepIndented, **kwargs)
    parser.add_argument('--config', required=True, help=CONFIG_HELP)
    return parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='dul-jax', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Config values are set after the command as --config.KEY=VALUE, e.g.\n'
               '  dul-jax train --config demo --workdir runs/demo \\\n'
               '      --config.train.steps=2000 --config.model.dropout=0.1 '
               '--config.mesh.fsdp=-1\n'
               'VALUE is parsed as the type of the key\'s default; see `dul-jax COMMAND -h`.')
    p.add_argument('--version', action='version', version=f'dul-jax {__version__}')
    sub = p.add_subparsers(dest='command', required=True)
    train = _config_command(
        sub, 'train', help='train a model (resumes if WORKDIR has checkpoints)',
        description='Train the model of CONFIG in WORKDIR, or resume it from its latest '
                    f'checkpoint; then evaluate it and write samples. {OVERRIDES_HELP} (e.g. '
                    '--config.train.steps=2000).')
    train.add_argument('--workdir', required=True, help=WORKDIR_HELP)
    train.add_argument('--debug', action='store_true',
                       help='NaN checks, chex assertions, and the step run without jit')
    sub.add_parser('configs', help='list the shipped configs: name, task, data, what it is')
    config = sub.add_parser('config', help='`dul-jax config show --config C`: the resolved config')
    config_sub = config.add_subparsers(dest='config_command', required=True)
    _config_command(
        config_sub, 'show', help='print the config a run would use, overrides applied',
        description='Print CONFIG with the --config.KEY=VALUE overrides applied, as the JSON a '
                    "run keeps in WORKDIR/config.json: every key it would use, before anything is "
                    'built.')
    ev = sub.add_parser(
        'eval', help='evaluate the latest checkpoint on the whole eval split',
        description=f'Evaluate the latest checkpoint of WORKDIR {RUN_OVERRIDES_HELP}, e.g. '
                    '--config.eval.max_examples=0.')
    ev.add_argument('--workdir', required=True, help=RUN_HELP)
    _config_command(
        sub, 'inspect', help='print shardings, bytes per device, collectives',
        description="Build the run of CONFIG on this host's devices as `dul-jax train` would and "
                    "print each parameter's logical axes and sharding, the bytes per device and "
                    f'the collectives in the compiled train step. {OVERRIDES_HELP} (e.g. '
                    '--config.mesh.fsdp=-1).')
    aot = _config_command(
        sub, 'compile',
        help='compile a run ahead of time for a TPU slice or GPU node; say if it fits',
        description='Compile the train and eval steps of `dul-jax train` for TOPOLOGY on this '
                    'host (no accelerator needed: libtpu or the CUDA plugin compiles), and print '
                    'per-chip memory, FLOPs, collectives and a roofline estimate of step time '
                    'and MFU. Exits 2 with one sentence when the run does not fit. '
                    f'{OVERRIDES_HELP} (e.g. --config.train.batch_size=512).')
    aot.add_argument('--topology', default='',
                     help="KIND:SHAPE, e.g. v5e:16x16, v5p:4x4x8, v6e:8x8, v4:4x4x4, h100:8 "
                          "(default: the config's `target`)")
    aot.add_argument('--save', default='', help='write the serialized train step to FILE')
    plan = _config_command(
        sub, 'plan', help='rank meshes, remat and microbatching for N chips by compiling each',
        description='Try the meshes (data x fsdp x tensor), remat policies and microbatch counts '
                    'that N chips of KIND allow, rule out analytically those whose state cannot '
                    'fit, compile the most promising ahead of time, and print a ranked table. '
                    f'{OVERRIDES_HELP} (e.g. --config.train.batch_size=512).')
    plan.add_argument('--chips', required=True, type=int, help='number of chips, e.g. 256')
    plan.add_argument('--kind', required=True, help='chip kind: v4, v5e, v5p, v6e, h100, h200')
    plan.add_argument('--max-compiles', type=int, default=6,
                      help='compile at most this many candidates (the best by the analytic '
                           'estimate)')
    sample = sub.add_parser(
        'sample', help='write samples from the latest checkpoint',
        description='Write NUM samples from the latest checkpoint of WORKDIR into '
                    f'WORKDIR/samples/, {RUN_OVERRIDES_HELP}, e.g. --config.sample.guidance=2 '
                    'for a diffusion run.')
    sample.add_argument('--workdir', required=True, help=RUN_HELP)
    sample.add_argument('--num', type=int, default=16, help='how many samples (default 16)')
    sample.add_argument('--seed', type=int, default=0,
                        help='the sampling seed: the same seed gives the same samples')
    sample.add_argument('--prompt', help='text models: every sample continues this text')
    sample.add_argument('--temperature', type=float,
                        help="divides the logits of token models (default the run's, 1.0)")
    sample.add_argument('--top_k', type=int,
                        help='token models: sample among the k likeliest tokens (0: all)')
    sample.add_argument('--label', type=int,
                        help='class-conditional models: every sample of this class (default: '
                             'each class in turn)')
    for name, what, by in (('compress', 'images (.npy) or a file', 'latest checkpoint'),
                           ('decompress', 'a compressed file', 'checkpoint that compressed it')):
        coder = sub.add_parser(
            name, help=f'{name} {what} with the model of a run (exact)',
            description=f"{name.capitalize()} INPUT, {what}, into OUTPUT by the model of "
                        f"WORKDIR's {by}, {RUN_OVERRIDES_HELP}.")
        coder.add_argument('--workdir', required=True, help=RUN_HELP)
        coder.add_argument('--input', required=True, help=f'{what} (local or gs://)')
        coder.add_argument('--output', required=True, help='the file to write (local or gs://)')
    export = sub.add_parser(
        'export', help='write the eval params of a checkpoint to one portable .msgpack file',
        description='Write the eval params (the EMA where the run keeps one) of checkpoint N '
                    '(default: the latest) to one msgpack file: {"params": nested dicts of numpy '
                    'arrays, "config": config.json text, "data_spec": data_spec.json text, '
                    '"step": int}. Read it with flax.serialization.msgpack_restore(open(FILE, '
                    '"rb").read()); no checkpoint code is needed. The checkpoint is read '
                    f'{RUN_OVERRIDES_HELP}.')
    export.add_argument('--workdir', required=True, help=RUN_HELP)
    export.add_argument('--output', required=True, help='FILE.msgpack (local or gs://)')
    export.add_argument('--step', type=int, default=None, help='a kept checkpoint step')
    data = sub.add_parser('data', help='data sets: `dul-jax data prepare NAME` before training',
                          description='Data sets, ahead of any run.')
    data_sub = data.add_subparsers(dest='data_command', required=True)
    prepare = data_sub.add_parser(
        'prepare', help='prepare a data set now, as a first `dul-jax train` would',
        description='Prepare data set NAME by the path a first `dul-jax train` takes: its '
                    'missing raw files are fetched into data.dir ($DUL_JAX_DATA_DIR, else '
                    '~/.cache/dul_jax/data; readable by all, for a shared folder) and checked, '
                    'then the data set is built into DIR; one line says its splits and where it '
                    'is. A data set already prepared there is left as it is. Raw-file settings '
                    'follow as --config.data.KEY=VALUE, e.g. --config.data.dir=/shared/raw or '
                    '--config.data.url=https://mirror/dul_jax_data. An unknown NAME exits 2.')
    prepare.add_argument('name', metavar='NAME',
                         help='a data.name: digits, binarized_mnist, mnist_test, '
                              'tiny_shakespeare, python_source, or a TFDS catalog name')
    prepare.add_argument('--dir', default='',
                         help='where prepared data sets go (data.tfds_dir; default '
                              '~/.cache/dul_jax/tfds)')
    sweep = sub.add_parser('sweep', help='run (or resume) a sweep of runs; fit and report it')
    sweep.add_argument('--sweep', required=True, help='a sweep file with get_sweep()')
    sweep.add_argument('--workdir', required=True,
                       help='where the runs go, one folder each (local or gs://)')
    sweep.add_argument('--shard', default='0/1', help='I/N: run only runs I, I+N, I+2N, ...')
    sweep.add_argument('--no-report', action='store_true',
                       help='skip the fits, plots and report.md when the sweep is complete')
    cooldown = sub.add_parser(
        'cooldown', help='cooldown branches of a warmup-stable-decay run, one per kept step',
        description='Branch a stable-phase run (optim.schedule=wsd, optim.decay_fraction=0, '
                    'optim.decay_steps=0) at each kept checkpoint K: copy checkpoint K into '
                    'OUT/cooldown_kK_dD and train it on for D steps with the learning rate '
                    'decayed over them (train.steps=K+D, optim.decay_steps=D; the shape is '
                    'optim.decay_shape), '
                    f'{RUN_OVERRIDES_HELP}, e.g. --config.optim.decay_shape=linear. Up to K a '
                    'branch is the stable run, so it equals a run of K+D steps trained from '
                    'scratch (Hagele et al. 2024). Branches run one after another; finished ones '
                    'are skipped, a killed one resumes. Each writes result.json like a sweep run, '
                    'OUT/results.jsonl lists them all for the fits, and one line per branch says '
                    'its final eval loss.')
    cooldown.add_argument('--workdir', required=True, help='the stable-phase run')
    cooldown.add_argument('--steps', required=True,
                          help='kept checkpoint steps to branch from, e.g. 1000,2000')
    cooldown.add_argument('--decay-steps', required=True, type=int,
                          help='D: steps of learning-rate decay in each branch')
    cooldown.add_argument('--out', default='', help='where the branches go (default '
                                                   'WORKDIR/cooldowns)')
    return p


def _sweep(args) -> None:
    from dul_jax import runtime, storage
    from dul_jax.scaling import sweep
    shard = sweep.parse_shard(args.shard)
    base, runs = sweep.load_sweep(args.sweep)
    runtime.start(base)
    results = sweep.run_sweep(args.sweep, args.workdir, shard)
    if len(results) == len(runs) and not args.no_report:
        from dul_jax.scaling import report
        outdir = storage.path(args.workdir) / 'report'
        report.write_report(results, outdir, title=f'Scaling laws: {args.sweep}',
                            **sweep.report_options(args.sweep))
        print(f'report: {outdir}/report.md and its plots')


def _cooldown(args, overrides: list[str]) -> None:
    from dul_jax import runtime
    from dul_jax.scaling import cooldown
    steps = cooldown.parse_steps(args.steps)
    runtime.start(cooldown.branch_config(args.workdir, steps[0], args.decay_steps, overrides))
    cooldown.run_branches(args.workdir, steps, args.decay_steps, args.out, overrides)


def _compile_or_plan(args, cfg) -> None:
    """`dul-jax compile` and `dul-jax plan`: deviceless, so this process runs JAX on the CPU
    platform and never touches (or waits for) a local accelerator or driver; the target's
    compiler does the work."""
    from dul_jax.sharding import targets
    if args.command == 'compile':
        name = args.topology or cfg.get('target', '')
        if not name:
            raise UserError('the config names no target; pass --topology, e.g. v5e:16x16.')
        target = targets.parse(name)
    else:
        target = targets.for_chips(args.kind, args.chips)
    import os
    # no TPU is attached to lock: let several deviceless compiles (plan, CI workers) share libtpu
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    import jax
    jax.config.update('jax_platforms', 'cpu')
    from dul_jax.train import aot
    if args.command == 'plan':
        from dul_jax.train import plan
        print(plan.format_plan(plan.plan(cfg, target, args.max_compiles)))
        return
    report = aot.compile_run(cfg, target)
    print(aot.format_report(report))
    if args.save:
        aot.save_executable(report.compiled, args.save)
        print(f'serialized train step -> {args.save}')
    if not report.fits:
        raise UserError(aot.remedy(report, cfg))


def _split_overrides(extra: list[str]) -> list[str]:
    overrides = []
    for item in extra:
        if not item.startswith('--config.'):
            raise UserError(f'unrecognised argument "{item}"; config values are set as '
                            '--config.KEY=VALUE.')
        overrides.append(item[len('--config.'):])
    return overrides


def run(argv: list[str]) -> int:
    args, extra = _parser().parse_known_args(argv)
    overrides = _split_overrides(extra)
    if args.command == 'sweep':
        if overrides:
            raise UserError('dul-jax sweep takes no --config.KEY=VALUE; put overrides in the '
                            'sweep file.')
        _sweep(args)
        return 0
    if args.command == 'cooldown':
        _cooldown(args, overrides)
        return 0
    if args.command == 'configs' and overrides:
        raise UserError('dul-jax configs takes no --config.KEY=VALUE; it lists the shipped '
                        'configs as they are.')
    if args.command == 'sample' and args.num <= 0:   # said before the trainer's imports
        raise UserError(f'--num must be positive, got {args.num}.')
    from dul_jax import config as config_lib
    if args.command == 'configs':
        print(config_lib.describe_shipped())
        return 0
    if args.command == 'config':
        print(config_lib.to_json(config_lib.load_config(args.config, overrides)))
        return 0
    if args.command == 'data':
        from dul_jax.data import prepare
        prepare.check_overrides(overrides)
        cfg = config_lib.base_config()
        for item in overrides:
            config_lib.apply_override(cfg, item)
        print(prepare.prepare(cfg.data, args.name, args.dir))
        return 0
    if args.command in ('train', 'inspect', 'compile', 'plan'):
        # before the trainer's imports (jax, flax, orbax: seconds), so a wrong path or key is
        # said at once
        cfg = config_lib.load_config(args.config, overrides)
        if args.command == 'train':
            config_lib.check_tracking(cfg)
    if args.command in ('compile', 'plan'):
        _compile_or_plan(args, cfg)
        return 0
    if args.command not in ('train', 'inspect'):
        from dul_jax.train.workdir import load_config_of  # a folder with no run: said at once
        cfg = load_config_of(args.workdir, overrides)
        for key in ('prompt', 'temperature', 'top_k', 'label'):   # sample's own flags
            if getattr(args, key, None) is not None:
                config_lib.set_value(cfg, f'sample.{key}', getattr(args, key))
    from dul_jax import runtime
    from dul_jax.train import loop
    runtime.start(cfg, getattr(args, 'debug', False))
    if args.command == 'train':
        loop.train(cfg, args.workdir, debug=args.debug)
    elif args.command == 'inspect':
        from dul_jax.sharding.inspect import report
        from dul_jax.train.setup import prepare
        print(report(prepare(cfg)))
    elif args.command == 'eval':
        loop.eval_command(cfg, args.workdir)
    elif args.command == 'sample':
        loop.sample_command(cfg, args.workdir, args.num, args.seed)
    elif args.command in ('compress', 'decompress'):
        from dul_jax import compress
        compress.command(args.command, cfg, args.workdir, args.input, args.output)
    elif args.command == 'export':
        from dul_jax.train import run as run_lib
        r = run_lib.export(cfg, args.workdir, args.output, args.step)
        print(f'step {r["step"]}: {r["num_params"]:,} {"EMA " if r["ema"] else ""}params, '
              f'{r["bytes"]:,} bytes -> {r["path"]}')
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except WorldFailed as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except OSError as e:
        known = from_os_error(e)
        if known is None:
            raise
        print(f'error: {known}', file=sys.stderr)
        return 2 if isinstance(known, UserError) else 1
    except RuntimeError as e:
        from dul_jax.train.loop import TrainingDiverged
        if isinstance(e, TrainingDiverged):
            print(f'error: {e}', file=sys.stderr)
            return 1
        if 'Unable to initialize backend' in str(e):   # e.g. JAX_PLATFORMS=tpu with no TPU
            print(f'error: JAX could not start the platform asked for ({str(e).splitlines()[0]});'
                  ' unset JAX_PLATFORMS or install and attach that accelerator.', file=sys.stderr)
            return 2
        raise


class _OneLine(logging.Filter):
    """Drops the traceback from a log record, keeping its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class _DropAbandonedWrites(logging.Filter):
    """Drops asyncio's record of a write's error that nothing awaited: orbax stops awaiting a
    save's writes at the first that fails, and the others' errors (what the store said: an
    OSError, or TensorStore's status such as "NOT_FOUND: ...") are logged with a traceback each
    when collected, after the failed save was said in one sentence."""
    _NEVER_RETRIEVED = ('Future exception was never retrieved',
                        'Task exception was never retrieved')
    _STATUS = re.compile(r'[A-Z][A-Z_]+: ')   # how TensorStore's errors begin (an absl status)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self._NEVER_RETRIEVED) or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not (isinstance(error, OSError) or
                    isinstance(error, ValueError) and self._STATUS.match(str(error)))


def _drop_closed_loop_callbacks(previous):
    """sys.unraisablehook without the abandoned writes' TensorStore futures calling back into the
    event loop orbax closed ("Event loop is closed", one traceback each)."""
    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
            previous(unraisable)
    return hook


def one_line_library_errors() -> None:
    """gcsfs and orbax (through absl's logger) log every failed request or save with its
    traceback before the error reaches the CLI, which ends in one sentence: keep their records
    to one line each, and drop those of the writes a failed save abandoned.
    DUL_JAX_TRACEBACKS=1 keeps the tracebacks."""
    if os.environ.get('DUL_JAX_TRACEBACKS') != '1':
        for name in ('gcsfs', 'absl'):
            logging.getLogger(name).addFilter(_OneLine())
        logging.getLogger('asyncio').addFilter(_DropAbandonedWrites())
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def entry_point() -> None:
    """The `dul-jax` command (its own process, so it may set the environment gcsfs reads and
    the logging of the libraries it drives)."""
    one_line_library_errors()
    if os.environ.get('STORAGE_EMULATOR_HOST'):
        # an emulator has no storage-control API: gcsfs's bucket-type lookup, on by default,
        # would warn about missing credentials on every call
        os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
    sys.exit(main())


if __name__ == '__main__':
    entry_point()
