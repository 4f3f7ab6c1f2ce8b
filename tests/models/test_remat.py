"""mvrag_jax/models/remat.py: ordered remat (same maths as jax.checkpoint, recomputed after the cotangent)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.core import jaxprs_in_params
import numpy as np

from mvrag_jax.models.remat import ordered_checkpoint, ordered_remat


def _block(w, x, scale):
    return jnp.sin(x @ w) * scale


def _loss(block):
    def loss(w, x):
        h = block(w, x, 2.0)
        h = block(w, h, 2.0)
        return jnp.sum(h ** 2)
    return loss


def test_values_and_gradients_equal_plain_autodiff():
    w = jax.random.normal(jax.random.key(0), (8, 8)) / 3
    x = jax.random.normal(jax.random.key(1), (4, 8))
    want = jax.value_and_grad(_loss(_block), argnums=(0, 1))(w, x)
    got = jax.value_and_grad(_loss(ordered_checkpoint(_block)), argnums=(0, 1))(w, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


def test_backward_recomputes_after_a_barrier_that_holds_the_cotangent():
    """Two blocks: the backward has one barrier per block, each taking that block's output cotangent (the ones
    vector of the last block's `sum`, scaled) together with the saved inputs, and `sin` runs 2 (fwd) + 2 (recompute)
    times, every recompute after its barrier."""
    w, x = jnp.ones((8, 8)), jnp.ones((4, 8))
    jaxpr = jax.make_jaxpr(jax.grad(_loss(ordered_checkpoint(_block))))(w, x).jaxpr

    def flatten(eqns):
        for eqn in eqns:
            yield eqn
            for sub in jaxprs_in_params(eqn.params):
                yield from flatten(sub.eqns)

    eqns = list(flatten(jaxpr.eqns))
    names = [eqn.primitive.name for eqn in eqns]
    barriers = [i for i, n in enumerate(names) if n == "optimization_barrier"]
    sins = [i for i, n in enumerate(names) if n == "sin"]
    assert len(barriers) == 2 and len(sins) == 4, names
    # each barrier carries the inputs (w, x, scale) and the (4, 8) output cotangent
    for i in barriers:
        shapes = [tuple(v.aval.shape) for v in eqns[i].invars]
        assert (8, 8) in shapes and shapes.count((4, 8)) == 2, shapes
    assert barriers[0] < sins[2] and barriers[1] < sins[3]


def test_static_arguments_stay_python_values():
    seen = []

    def block(x, mode):
        seen.append(mode)
        return x * 2 if mode == "double" else x

    f = ordered_checkpoint(block, static_argnums=(1,))
    np.testing.assert_allclose(jax.grad(lambda x: f(x, "double").sum())(jnp.ones(3)), 2 * np.ones(3))
    assert set(seen) == {"double"}


class _Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        def run(module, index, h):
            return nn.Dense(x.shape[-1], name=f"dense_{index}", parent=module)(jnp.tanh(h))
        ordered = ordered_remat(run, static_argnums=(1,))
        for index in range(2):
            x = ordered(self, index, x)
        return x


class _PlainStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        for index in range(2):
            x = nn.Dense(x.shape[-1], name=f"dense_{index}")(jnp.tanh(x))
        return x


def test_flax_module_method_keeps_param_paths_and_gradients():
    x = jax.random.normal(jax.random.key(0), (3, 5))
    params = _PlainStack().init(jax.random.key(1), x)["params"]
    assert jax.tree.structure(_Stack().init(jax.random.key(1), x)["params"]) == jax.tree.structure(params)

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 jax.grad(loss(_Stack()))(params), jax.grad(loss(_PlainStack()))(params))
