"""Test-wide setup: 8 simulated CPU devices (set before jax is imported), and shared fixtures."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
    """One prepared-data cache for the whole session, so each data set is built once."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def shared_data():
    """../shared/data, or skip: a user's fresh clone has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'{SHARED_DATA} is absent (only the project machines have it)')
    return str(SHARED_DATA)
