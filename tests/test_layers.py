"""Imports point one way (docs/architecture.md): each part of dul_jax imports only the parts
listed for it here, and nothing imports experiments/ or benchmarks/."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'dul_jax'

# What each top-level module or package of dul_jax may import from the others.
ALLOWED = {
    'errors': set(), 'accounting': set(), 'losses': set(), 'storage': set(), 'model_configs': set(),
    'images': {'storage'},
    'config': {'errors', 'storage'},
    'data': {'errors', 'storage'},
    'sharding': {'errors'},
    'ops': {'errors', 'losses'},               # each kernel's plain reference
    'models': {'ops'},
    'sampling': {'losses'},
    'metrics': {'data', 'errors', 'losses', 'models'},
    'tasks': {'accounting', 'config', 'data', 'errors', 'images', 'losses', 'model_configs',
              'models', 'ops', 'sampling', 'sharding', 'storage'},
    'evaluators': {'config', 'data', 'errors', 'losses', 'metrics', 'sharding', 'tasks'},
    'train': {'accounting', 'config', 'data', 'errors', 'evaluators', 'images', 'sharding',
              'storage', 'tasks'},
    'scaling': {'accounting', 'config', 'errors', 'storage', 'tasks', 'train'},
    'runtime': {'errors', 'sharding'},
    'compress': {'errors', 'storage', 'tasks', 'train'},
    'cli': {'compress', 'config', 'data', 'errors', 'runtime', 'scaling', 'sharding', 'storage',
            'train'},
}


def _imports(path: pathlib.Path) -> set[str]:
    """Fully qualified names a file imports (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def test_every_import_between_parts_is_allowed():
    wrong = []
    for path in sorted(PACKAGE.rglob('*.py')):
        part = path.relative_to(PACKAGE).parts[0].removesuffix('.py')
        if part == '__init__':
            continue
        assert part in ALLOWED, f'{part} is a new part of dul_jax: add it to ALLOWED'
        for name in _imports(path):
            root = name.split('.')[0]
            assert root not in ('experiments', 'benchmarks'), f'{path} imports {name}'
            target = name.split('.')[1] if root == 'dul_jax' and '.' in name else None
            if target and target != part and target in ALLOWED and target not in ALLOWED[part]:
                wrong.append(f'{path.relative_to(PACKAGE.parent)} imports {name}')
    assert not wrong, wrong


def test_the_check_sees_a_wrong_arrow(tmp_path):
    bad = tmp_path / 'model.py'
    bad.write_text('from dul_jax.train.loop import train\nimport dul_jax.losses.gaussian\n')
    assert {'dul_jax.train.loop', 'dul_jax.losses.gaussian'} <= _imports(bad)
    assert 'train' not in ALLOWED['models'] and 'losses' not in ALLOWED['models']
