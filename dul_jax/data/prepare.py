"""`dul-jax data prepare NAME`: a data set made ready before anyone trains on it, by the path a
first `dul-jax train` takes (`data.describe`), e.g. to fill a tfds_dir that a lab shares."""

from dul_jax.errors import UserError


def check_overrides(overrides):
    """Only data keys mean anything here: another key would be silently ignored."""
    for item in overrides:
        if not item.startswith('data.'):
            raise UserError(f'dul-jax data prepare takes only --config.data.KEY=VALUE, not '
                            f'--config.{item}.')


def prepare(data_cfg, name, tfds_dir='') -> str:
    """Prepares data set `name` in `tfds_dir` ('' = data_cfg's) with the rest of `data_cfg` (the
    base config's data section: data.dir, data.url, ...); returns one line: the name, each
    split's example count, and where the data set is."""
    from dul_jax import data
    from dul_jax.data import catalog

    data_cfg.name = name
    if tfds_dir:
        data_cfg.tfds_dir = tfds_dir
    try:
        spec = data.describe(data_cfg)
    except catalog.UnknownDataSet:
        raise UserError(
            f"unknown data set {name!r}; name a local data set "
            f"({', '.join(sorted(catalog.LOCAL_BUILDERS))}) or a TFDS catalog name such as mnist "
            f"or {catalog.CATALOG_PREFIX}tiny_shakespeare.") from None
    return summary(data_cfg, spec)


def summary(data_cfg, spec) -> str:
    """One line: each split's examples (and a text split's tokens) and where the data set is."""
    from dul_jax.data import arrays, catalog, sources, synthetic, toy
    from dul_jax.data.catalog import Origin

    s = sources.settings(data_cfg)
    e = catalog.entry(s.name, s.source_dir, s.tfds_dir, s.data_url)
    where = None   # generated when read: nothing stored
    if e.origin in (Origin.LOCAL, Origin.CATALOG):
        counts = {split: info.num_examples for split, info in e.splits.items()}
        where = e.builder.data_dir
    elif e.origin is Origin.ARRAYS:
        counts, where = arrays.info(s.name)['splits'], arrays.folder(s.name)
    elif e.origin is Origin.TOY:
        counts = {split: n for split, (n, _) in toy.SPLITS.items()}
    else:
        counts = synthetic.EXAMPLES
    tokens = {spec.train_split: spec.num_train, spec.eval_split: spec.num_eval} \
        if spec.is_text and where is not None else {}
    splits = '; '.join(
        f'{split}: {n:,} example{"" if n == 1 else "s"}'
        + (f', {tokens[split]:,} tokens' if split in tokens else '')
        for split, n in sorted(counts.items(), key=lambda item: (item[0] != 'train', item[0])))
    if where is None:
        return f'{s.name} ({splits}) is generated when read, so there is nothing to prepare'
    return f'prepared {s.name} ({splits}) in {where}'
