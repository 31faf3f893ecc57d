"""Configs: ml_collections `get_config()` files, command-line overrides, and early validation.

A config file defines `get_config()` returning a ConfigDict, usually `base_config()` below with the
model and data changed. `--config.a.b=value` overrides parse `value` as the type already in the
config, so an unknown key or a wrong type is refused before anything compiles.
"""

import ast
import functools
import importlib.util
import json
import os
import posixpath
import re
import types

import ml_collections

from dul_jax.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer, the CLI and sweep tools rely on, with working defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = 'autoregressive'
    c.parallelism = 'jit'  # or 'pmap': per-device steps and pmean (shard_map; sharding/pmap.py)
    c.init_from = ''       # warm start: a run's workdir or WORKDIR/checkpoints/STEP to take params
    c.init_params = ''     # with init_from: a regex on param names to take ('': all of them)
    c.target = ''          # the slice or node the run is sized for (`dul-jax compile`'s default)

    c.data = ml_collections.ConfigDict()
    c.data.name = 'digits'
    # raw local corpora (binarized_mnist/, mnist/, ...); '' = $DUL_JAX_DATA_DIR, else
    # ~/.cache/dul_jax/data
    c.data.dir = ''
    # base URL of a mirror laid out like data.dir, fetched from when a raw file is missing;
    # '' = $DUL_JAX_DATA_URL, else each file's canonical public URL (dul_jax/data/download.py)
    c.data.url = ''
    c.data.tfds_dir = '~/.cache/dul_jax/tfds'  # where TFDS builders write prepared files
    c.data.seq_len = 64                        # text window length
    c.data.text_vocab = 'bytes'                # 'bytes' (256) or 'chars' (the corpus's own)
    c.data.text_store = 'memory'  # text splits: 'memory' (whole) or 'array_record' (streamed)
    # image levels per channel; 0 = from the data set (its dtype for a catalog set), e.g. 2 for
    # tfds:binarized_mnist, whose uint8 pixels are 0 or 1
    c.data.num_levels = 0

    c.model = ml_collections.ConfigDict()       # task-specific; see each task's defaults

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = 'adamw'                 # or 'lars' (SimCLR/BYOL's large-batch SGD)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    # after a linear warmup from 0: 'cosine' (to min_lr_ratio * lr at train.steps), 'constant',
    # or 'wsd' (warmup-stable-decay, Hägele et al. 2024): constant lr, then a decay over the last
    # decay steps of train.steps down to min_lr_ratio * lr, of shape decay_shape
    c.optim.schedule = 'cosine'
    c.optim.min_lr_ratio = 0.1
    c.optim.decay_shape = '1-sqrt'              # wsd: 'linear', 'cosine' or '1-sqrt'
    c.optim.decay_fraction = 0.2                # wsd: decay over this share of train.steps
    # wsd: decay over the last decay_steps of train.steps, whatever their number (0: use
    # decay_fraction). A stable-phase run sets decay_fraction=0 (never decays); its cooldown
    # branch from step k runs train.steps=k+d with decay_steps=d, and matches it up to step k.
    c.optim.decay_steps = 0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.1                  # on kernels and embeddings only
    c.optim.clip_norm = 1.0                     # global gradient norm; 0 disables
    c.optim.ema_decay = 0.0                     # 0 disables EMA params

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32                     # global, over all devices and processes
    c.train.grad_accum = 1                      # microbatches per step (the same update)
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.ckpt_every = 500
    c.train.sample_every = 0                    # 0: sample only at the end
    c.train.keep_checkpoints = 3
    # orbax's replica-parallel saving: each replicated array's writing split among its replicas;
    # faster for big replicated states on many hosts, but the first save compiles a slice per
    # array and device (train/checkpoint.py)
    c.train.ckpt_replica_parallel = False
    c.train.profile_steps = 0                   # steps traced by jax.profiler into tensorboard/
    c.train.profile_start = 10                  # the first traced step (after compilation)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.eval.max_examples = 2048                  # per periodic eval; 0 = the whole split
    # Shared evaluators (dul_jax/evaluators/) run at the end of training and by `dul-jax eval`:
    # 'bound' (variational bound, bits/dim), 'probe' (linear probe and k-NN), 'fid' (domain FID),
    c.eval.evaluators = ()
    c.eval.bound = ml_collections.ConfigDict({'examples': 256})        # 0: the whole eval split
    c.eval.probe = ml_collections.ConfigDict({'knn_k': 20})
    c.eval.fid = ml_collections.ConfigDict({'classifier': '', 'num': 0})  # num 0: eval split size
    # 'modes': mode coverage of `num` samples on a 2-D toy mixture (data/toy.py)
    c.eval.modes = ml_collections.ConfigDict({'num': 2500})
    # 'iwae': the importance-weighted bound with k draws, `batch_size` images x `chunk` draws at
    # a time; 'posterior': active units and KL per latent dimension over the eval split.
    c.eval.iwae = ml_collections.ConfigDict({'k': 5000, 'chunk': 500, 'batch_size': 10,
                                             'examples': 0})             # 0: the whole eval split

    # Where metrics go besides metrics.jsonl (always written): 'tensorboard', 'wandb' (pip install
    # 'dul_jax[wandb]') or 'package.module:Class', a Tracker of your own (docs/trackers.md).
    c.tracking = ml_collections.ConfigDict()
    c.tracking.trackers = ('tensorboard',)
    c.tracking.wandb = ml_collections.ConfigDict({
        'project': 'dul_jax', 'entity': '', 'name': '',   # name '': the workdir's folder name
        'tags': (), 'mode': ''})   # mode '': W&B's default (WANDB_MODE); 'offline', 'online'

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 16
    c.sample.temperature = 1.0
    c.sample.top_k = 0                          # 0: sample from the full distribution
    c.sample.label = -1     # class-conditional models: every sample of this class; -1: 0, 1, ...
    c.sample.prompt = ''    # text models: every sample continues this text

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.slices = 1                           # TPU slices over DCN (or GPU node groups)
    c.mesh.rules = ()                           # (logical, mesh axis) pairs before the defaults

    # The kernel of each op (dul_jax/ops): `auto` picks the measured-fastest per backend,
    # `reference` is plain JAX; each op's fast paths are listed in dul_jax/ops/__init__.py.
    c.ops = ml_collections.ConfigDict()
    c.ops.attention = 'auto'
    c.ops.matmul = 'auto'
    c.ops.gelu = 'auto'
    c.ops.positions = 'auto'
    c.ops.cross_entropy = 'auto'

    c.runtime = ml_collections.ConfigDict()     # process settings, applied once by runtime.start
    # False runs CPU computations on the calling thread, whose heap keeps a large step's memory
    # under benchmarks/cpu_env.sh; True (jax's default) overlaps Python with the step.
    c.runtime.cpu_async_dispatch = True
    # JAX's persistent compilation cache, so a restarted run (every host of a pod) skips its
    # compiles: 'auto' is ~/.cache/dul_jax/jax_cache on TPUs and GPUs and off on the CPU, '' is
    # off, anything else a folder (local or gs://). $JAX_COMPILATION_CACHE_DIR takes precedence.
    c.runtime.compilation_cache = 'auto'
    # '' runs on what JAX finds; 'tpu' or 'gpu' refuses to start on anything else (the launch
    # recipes ask for theirs), so a pod run without its accelerator wheels never trains on CPUs
    c.runtime.platform = ''

    c.distributed = ml_collections.ConfigDict()  # multi-process runs; see sharding/distributed.py
    c.distributed.enabled = False
    c.distributed.coordinator = ''              # HOST:PORT of process 0
    c.distributed.num_processes = 0             # 0: from the environment
    c.distributed.process_id = -1               # -1: from the environment
    c.distributed.local_device_ids = ()         # e.g. (0,) for one GPU per process
    c.distributed.initialization_timeout_s = 300  # how long to wait for every process to join
    c.distributed.heartbeat_timeout_s = 60      # a silent process ends the run after this
    return c


def _is_url(path: str) -> bool:
    return re.match(r'^[a-z][a-z0-9+.-]*://', path) is not None   # gs://, and what epath reads


def load_file_module(path: str, kind: str, example: str):
    """The Python file `path` (a config or sweep file; local, or on a store such as gs://),
    executed as a module."""
    if _is_url(path):
        from dul_jax import storage  # only here: it imports etils and, for gs://, gcsfs
        source = storage.read_text(storage.path(path))
        if source is None:
            raise UserError(f'{kind} file {path} does not exist; pass an existing --{kind} '
                            f'file, e.g. {example}.')
        module = types.ModuleType(f'_dul_jax_{kind}')
        module.__file__ = path
        run = functools.partial(exec, compile(source, path, 'exec'), module.__dict__)
    elif not os.path.isfile(path):
        raise UserError(f'{kind} file {path} does not exist; pass an existing --{kind} file, '
                        f'e.g. {example}.')
    else:
        spec = importlib.util.spec_from_file_location(f'_dul_jax_{kind}', path)
        module = importlib.util.module_from_spec(spec)
        run = functools.partial(spec.loader.exec_module, module)
    try:
        run()
    except SyntaxError as e:
        raise UserError(f'{kind} file {path} has a syntax error at line {e.lineno}: '
                        f'{e.msg}.') from None
    except ModuleNotFoundError as e:
        raise UserError(f'{kind} file {path} imports {e.name}, which is not installed; install '
                        f'it, or fix the import.') from None
    return module


def call_file_function(path: str, function: str, kind: str, example: str, returns: str):
    """Run `function()` defined in the Python file `path` (a config or sweep file)."""
    module = load_file_module(path, kind, example)
    if not hasattr(module, function):
        raise UserError(f'{kind} file {path} defines no {function}(); add one returning '
                        f'{returns}.')
    value = getattr(module, function)()
    if value is None:
        raise UserError(f'{function}() in {kind} file {path} returned nothing; make it return '
                        f'{returns}.')
    return value


def _text(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def shipped_configs() -> dict[str, str]:
    """{name: file} of the configs installed with the package as `dul_jax.configs`
    (`experiments/configs/` in a checkout): 'demo', 'pod/gpt_1b', ...; helpers without
    `get_config()` are left out."""
    root = importlib.util.find_spec('dul_jax.configs').submodule_search_locations[0]
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith('.py') and name != '__init__.py' and \
                    'def get_config(' in _text(path):
                found[os.path.relpath(path, root)[:-3].replace(os.sep, '/')] = path
    return dict(sorted(found.items()))


def describe_shipped() -> str:
    """A table of the shipped configs: name, task, data set and the first sentence of each
    docstring, read from the files without running them (a config that loads another inherits
    what it does not set)."""
    shipped = shipped_configs()
    facts = {}

    def fact(name):   # (task, data) that `name` sets, else what the config it loads sets
        if name not in facts:
            text = _text(shipped[name])
            task = re.search(r"c\.task = '([^']+)'", text) or \
                re.search(r'model_configs\.(?!gan_optimizer_groups|augment)(\w+)\(\)', text)
            data = re.search(r"c\.data\.name = '([^']+)'", text)
            parent = re.search(r"load_config\(os\.path\.join\(.*'(\w+)\.py'\)", text)
            near = parent and posixpath.join(posixpath.dirname(name), parent.group(1))
            up = fact(near) if near in shipped else fact(parent.group(1)) \
                if parent and parent.group(1) in shipped else ('-', '-')
            facts[name] = (task.group(1) if task else up[0], data.group(1) if data else up[1])
        return facts[name]

    rows = []
    for name, path in shipped.items():
        doc = ' '.join((ast.get_docstring(ast.parse(_text(path))) or '').split())
        first = re.split(r'(?<!\bal)(?<!\be\.g)\.\s(?=[A-Z`])', doc, maxsplit=1)[0]
        rows.append((name, *fact(name), first if len(first) <= 100 else first[:99] + '…'))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return '\n'.join(f'{n:{widths[0]}}  {t:{widths[1]}}  {d:{widths[2]}}  {doc}'
                     for n, t, d, doc in rows)


def config_file(name: str) -> str:
    """The config file `name` stands for: a file that exists, else a shipped config by name
    ('demo', 'demo.py' or 'experiments/configs/demo.py' from any folder); one sentence if
    neither."""
    if os.path.isfile(name) or _is_url(name):
        return name
    key = name.removeprefix('experiments/configs/').removesuffix('.py')
    shipped = shipped_configs()
    if key in shipped:
        return shipped[key]
    raise UserError(f'config {name} is neither a file nor a shipped config; pass a config file '
                    f'or a shipped name such as demo (`dul-jax configs` lists all '
                    f'{len(shipped)}).')


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Run `get_config()` from `path` (a file or a shipped config's name), then apply
    `key=value` overrides (keys relative to root)."""
    cfg = call_file_function(config_file(path), 'get_config', 'config', 'demo', 'a ConfigDict')
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """Set `a.b.c=value` from the command line, parsing `value` as the existing entry's type."""
    if '=' not in item:
        raise UserError(f'override "{item}" has no "="; write it as --config.KEY=VALUE.')
    key, text = item.split('=', 1)
    node, leaf = _parent(cfg, key)
    node[leaf] = parse_value(key, text, node[leaf])


def set_value(cfg: ml_collections.ConfigDict, key: str, value) -> None:
    """Set the existing entry `a.b.c` to a Python value of its type (an int where a float is
    expected, a list where a tuple is); one sentence naming the key otherwise."""
    node, leaf = _parent(cfg, key)
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        value = type(current)(value)
    if current is not None and type(value) is not type(current):
        raise UserError(f'config key "{key}" holds {type(current).__name__} values like '
                        f'{current!r}, not {value!r}.')
    node[leaf] = value


def _parent(cfg: ml_collections.ConfigDict, key: str):
    """(the ConfigDict holding `key`'s last part, that part); UserError for an unknown key."""
    *parents, leaf = key.split('.')
    node = cfg
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            known = ', '.join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) \
                else ''
            raise UserError(f'unknown config key "{".".join(parents[:i + 1])}"; check the '
                            f'spelling (known here: {known}).')
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = ', '.join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) \
            else ''
        raise UserError(f'unknown config key "{key}"; check the spelling (known here: {known}).')
    return node, leaf


def parse_value(key: str, text: str, current):
    """Parse `text` as the type of `current`; one clear sentence when it does not fit."""
    kind = type(current)
    try:
        if kind is bool:
            if text.lower() not in ('true', 'false', '1', '0'):
                raise ValueError(text)
            return text.lower() in ('true', '1')
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind in (tuple, list):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            return kind(value)
        if current is None:  # untyped default: take a Python literal, else the string
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
    except (ValueError, SyntaxError):
        pass
    article = 'an' if kind.__name__[0] in 'aeiou' else 'a'
    raise UserError(f'--config.{key}={text} is not a valid {kind.__name__}; give {article} '
                    f'{kind.__name__} like {current!r}.')


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


def flatten(cfg) -> dict[str, object]:
    """{'a.b.c': value} for every leaf of a ConfigDict (or nested dict)."""
    items = cfg.items() if hasattr(cfg, 'items') else ()
    flat = {}
    for key, value in items:
        if hasattr(value, 'items'):
            flat.update({f'{key}.{k}': v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def differences(old, new) -> list[str]:
    """'key old -> new' for every dotted key whose value differs between two configs (JSON
    round-tripped, so tuples and lists compare equal)."""
    a, b = (flatten(json.loads(to_json(c))) for c in (old, new))
    return [f'{k} {a.get(k, "(absent)")!r} -> {b.get(k, "(absent)")!r}'
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition: the one-line validation helper."""
    if not condition:
        raise UserError(message)


SCHEDULES = ('cosine', 'constant', 'wsd')
DECAY_SHAPES = ('linear', 'cosine', '1-sqrt')


def wsd_decay_steps(optim, total_steps: int) -> int:
    """How many of the last steps a 'wsd' schedule decays over: optim.decay_steps, or (when that
    is 0) optim.decay_fraction of total_steps, rounded."""
    steps = optim.get('decay_steps', 0)
    return steps if steps > 0 else round(optim.get('decay_fraction', 0.2) * total_steps)


def check_schedule(optim, total_steps: int) -> None:
    """UserError for learning-rate schedule settings that cannot make a schedule of total_steps."""
    check(optim.schedule in SCHEDULES, f'optim.schedule must be "cosine", "constant" or "wsd", '
                                       f'got "{optim.schedule}".')
    shape = optim.get('decay_shape', '1-sqrt')
    check(shape in DECAY_SHAPES, f'optim.decay_shape must be "linear", "cosine" or "1-sqrt", got '
                                 f'"{shape}".')
    fraction = optim.get('decay_fraction', 0.2)
    check(0.0 <= fraction <= 1.0, f'optim.decay_fraction must be in [0, 1], got {fraction}.')
    check(optim.get('decay_steps', 0) >= 0, 'optim.decay_steps must be >= 0 (0: use '
                                            f'decay_fraction), got {optim.get("decay_steps")}.')
    if optim.schedule == 'wsd':
        warmup, decay = optim.warmup_steps, wsd_decay_steps(optim, total_steps)
        check(warmup + decay <= total_steps, f'optim.schedule="wsd" needs its warmup and decay to '
              f'fit in the run, but optim.warmup_steps={warmup} plus {decay} decay steps exceed '
              f'train.steps={total_steps}; lower optim.warmup_steps, optim.decay_steps or '
              'optim.decay_fraction, or raise train.steps.')


TRACKERS = ('tensorboard', 'wandb')   # or 'package.module:Class' (train/trackers.py)


def check_tracking(cfg) -> None:
    """UserError for `tracking.trackers` entries that cannot be built; imports none of them."""
    for name in cfg.tracking.trackers:
        if name == 'wandb' and importlib.util.find_spec('wandb') is None:
            raise UserError('tracking.trackers includes "wandb", but Weights & Biases is not '
                            "installed; pip install 'dul_jax[wandb]' (or `pip install wandb`).")
        if name in TRACKERS:
            continue
        module, colon, attr = str(name).partition(':')
        check(bool(colon and module and attr.isidentifier()), f'tracking.trackers has '
              f'"{name}"; each entry is "tensorboard", "wandb" or "package.module:TrackerClass" '
              '(metrics.jsonl is always written).')
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        check(found is not None, f'tracking.trackers has "{name}", but no module {module} can '
                                 'be imported; install it or put it on PYTHONPATH.')


def validate_common(cfg) -> None:
    """Checks that need no data set, model or device: the keys every run relies on."""
    t = cfg.train
    for name in ('steps', 'batch_size', 'log_every'):
        check(t[name] > 0, f'train.{name} must be positive, got {t[name]}; set '
                           f'--config.train.{name} to a positive integer.')
    for name in ('eval_every', 'ckpt_every', 'sample_every'):
        check(t[name] >= 0, f'train.{name} must be >= 0 (0 disables), got {t[name]}.')
    check(cfg.parallelism in ('jit', 'pmap'),
          f'parallelism must be "jit" or "pmap", got "{cfg.parallelism}".')
    check(cfg.optim.get('optimizer', 'adamw') in ('adamw', 'lars'), 'optim.optimizer must be '
          f'"adamw" or "lars", got "{cfg.optim.get("optimizer")}".')
    check_schedule(cfg.optim, cfg.train.steps)
    check(0.0 <= cfg.optim.ema_decay < 1.0,
          f'optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}.')
    check(cfg.optim.lr > 0, f'optim.lr must be positive, got {cfg.optim.lr}.')
    check(cfg.eval.batch_size > 0, f'eval.batch_size must be positive, got {cfg.eval.batch_size}.')
    check(cfg.eval.max_examples >= 0, 'eval.max_examples must be >= 0 (0: the whole split), got '
                                      f'{cfg.eval.max_examples}.')
    check(cfg.sample.num > 0, f'sample.num must be positive, got {cfg.sample.num}; the run '
                              'writes samples at its end.')
    check(cfg.sample.temperature > 0, 'sample.temperature must be positive (1: the model\'s own '
          f'distribution), got {cfg.sample.temperature}.')
    check(cfg.sample.top_k >= 0, f'sample.top_k must be >= 0 (0: all), got {cfg.sample.top_k}.')
    check(t.profile_steps >= 0 and t.profile_start >= 1,
          f'train.profile_steps must be >= 0 (0: off) and train.profile_start >= 1, got '
          f'{t.profile_steps} and {t.profile_start}.')
    check(not cfg.init_params or cfg.init_from, 'init_params is set but init_from is empty; set '
          '--config.init_from to the run whose params to take.')
    if cfg.init_params:
        try:
            re.compile(cfg.init_params)
        except re.error as e:
            raise UserError(f'init_params={cfg.init_params!r} is not a regular expression '
                            f'({e}).') from None
    check(t.keep_checkpoints >= 1, f'train.keep_checkpoints must be at least 1, got '
                                   f'{t.keep_checkpoints}; it is how many checkpoints to keep.')
