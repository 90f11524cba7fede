"""float64 everywhere in the tests (closed forms are compared), strict dtype and rank promotion, and a key
fixture. Shared helpers live in
`tests/helpers.py`."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# as diffrax's suite does: an implicit dtype promotion or rank broadcast in the library is an error
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
