"""float64 everywhere in the tests (closed forms are compared) and a key fixture. Shared helpers live in
`tests/helpers.py`."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)
