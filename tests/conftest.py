"""float64 is on for the whole suite so parity tests can check 1e-10; every
float32 test passes float32 arrays explicitly, and test_contract checks that
float32 in gives float32 out (so no code silently upcasts)."""

import jax

jax.config.update("jax_enable_x64", True)
