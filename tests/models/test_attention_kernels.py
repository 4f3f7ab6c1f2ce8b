"""The runtime.attention kernels (mvrag_jax/models/attention_kernels.py): choice, errors, parity with "xla"."""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs.tiny import get_config
from mvrag_jax import sharding
from mvrag_jax.models import attention_kernels as kernels
from mvrag_jax.models.attention import SpatialTransformer3D
from mvrag_jax.models.unet import MultiViewUNet, UNetConfig, UNetConfigError, dummy_inputs, init_params

BACKEND = jax.default_backend()
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -r "
                                  "requirements-tpu.txt, or PYTHONPATH=<dir with libtpu>) so no TPU compile is possible")


def _qkv(b=1, lq=1024, lk=1024, heads=2, dh=16, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(np.float32)
               for shape in ((b, lq, heads, dh), (b, lk, heads, dh), (b, lk, heads, dh)))
    return tuple(jnp.asarray(t, dtype) for t in (q, k, v))


def test_unknown_kernel_is_a_config_error_that_names_the_setting():
    with pytest.raises(UNetConfigError, match=r"attention='flash' is unknown; set runtime\.attention to one of"):
        UNetConfig.from_config(_tiny_config(attention="flash"))


@pytest.mark.parametrize("kernel, platform, message", [
    ("cudnn", "cpu", r"'cudnn' needs a GPU .* set runtime\.attention=xla"),
    ("pallas_tpu", "cpu", r"'pallas_tpu' needs a TPU .* set runtime\.attention=xla"),
    ("cudnn", "tpu", r"'cudnn' needs a GPU"),
])
def test_kernel_the_platform_cannot_run_is_an_error_with_the_fix(kernel, platform, message):
    with pytest.raises(kernels.AttentionKernelError, match=message):
        kernels.resolve_kernel(kernel, platform)


def test_auto_is_chunked_on_cpu_and_xla_on_accelerators():
    assert kernels.resolve_kernel("auto", "cpu") == "chunked"
    assert kernels.resolve_kernel("auto", "tpu") == "pallas_tpu"
    assert kernels.resolve_kernel("auto", "gpu") == "xla"


def test_unavailable_kernel_fails_when_the_model_is_traced_here():
    other = "pallas_tpu" if BACKEND != "tpu" else "cudnn"
    config = UNetConfig.from_config(_tiny_config(attention=other))
    with pytest.raises(kernels.AttentionKernelError, match=f"'{other}' needs"):
        jax.eval_shape(init_params, config, jax.random.key(0))


def test_chunked_splits_long_queries_and_matches_xla():
    q, k, v = _qkv()  # logits 2 x 1024 x 1024 > CHUNK_LOGITS: computed in query blocks
    chunked = lambda q, k, v: kernels.dot_product_attention(q, k, v, kernel="chunked")
    assert "scan" in str(jax.make_jaxpr(chunked)(q, k, v))
    with jax.default_matmul_precision("highest"):
        expected = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        np.testing.assert_allclose(jax.jit(chunked)(q, k, v), expected, rtol=1e-6, atol=1e-6)


def test_chunked_with_a_mask_matches_xla():
    q, k, v = _qkv(lq=8, lk=8)
    mask = jnp.tril(jnp.ones((8, 8), bool))[None, None]  # causal, as CLIP's text encoder
    with jax.default_matmul_precision("highest"):
        expected = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
        np.testing.assert_allclose(kernels.dot_product_attention(q, k, v, kernel="chunked", mask=mask), expected,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", ["xla", "chunked"])
def test_segment_ids_keep_exactly_the_pairs_with_equal_ids(kernel):
    q, k, v = _qkv(b=2, lq=512, lk=512)
    ids = jnp.asarray(np.stack([np.zeros(512), np.arange(512) // 128]), jnp.int32)  # one segment; 4 blocks of 128
    block_diagonal = np.zeros((2, 1, 512, 512), bool)
    block_diagonal[0] = True
    for start in range(0, 512, 128):
        block_diagonal[1, :, start:start + 128, start:start + 128] = True
    with jax.default_matmul_precision("highest"):
        out = kernels.dot_product_attention(q, k, v, kernel=kernel, segment_ids=(ids, ids))
        expected = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(block_diagonal), implementation="xla")
        # object 1's first block attends only to itself: the same as attention over that block alone
        alone = jax.nn.dot_product_attention(q[1:, :128], k[1:, :128], v[1:, :128], implementation="xla")
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1:, :128], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0, :128], out[1, :128])  # the two objects really are masked differently


def test_segment_ids_and_a_mask_together_are_refused():
    q, k, v = _qkv(lq=8, lk=8)
    ids = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(kernels.AttentionKernelError, match="not both"):
        kernels.dot_product_attention(q, k, v, kernel="xla", segment_ids=(ids, ids), mask=jnp.ones((8, 8), bool))


def test_spatial_transformer_is_the_same_with_every_kernel_this_backend_runs():
    x, context, tokens = (jnp.asarray(np.random.default_rng(i).standard_normal(s).astype(np.float32))
                          for i, s in enumerate(((8, 16, 16, 32), (8, 77, 32), (8, 4, 32))))
    layer = lambda kernel: SpatialTransformer3D(32, 2, 16, num_frames=4, attention_kernel=kernel)
    params = layer("xla").init(jax.random.key(0), x, context, tokens)
    runnable = [k for k in ("chunked", "cudnn", "pallas_tpu") if _runs_here(k)]
    apply = jax.jit(lambda kernel, p, *a: layer(kernel).apply(p, *a, 0.7), static_argnums=0)
    with jax.default_matmul_precision("highest"):
        reference = apply("xla", params, x, context, tokens)  # attn1 over 4 views x 256 tokens: chunked splits it
        for kernel in runnable:
            np.testing.assert_allclose(apply(kernel, params, x, context, tokens), reference, rtol=1e-5, atol=1e-5,
                                       err_msg=kernel)


@pytest.mark.skipif(BACKEND != "gpu", reason="cudnn attention needs a GPU; this backend is " + BACKEND)
def test_cudnn_matches_xla_in_bfloat16():
    q, k, v = _qkv(b=2, lq=256, lk=77, heads=4, dh=64, dtype=jnp.bfloat16)
    out = kernels.dot_product_attention(q, k, v, kernel="cudnn")
    expected = jax.nn.dot_product_attention(*(t.astype(jnp.float32) for t in (q, k, v)), implementation="xla")
    np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=2e-2)


@pytest.mark.skipif(BACKEND != "tpu", reason="pallas_tpu attention runs on a TPU; this backend is " + BACKEND)
def test_pallas_tpu_matches_xla_with_padded_lengths():
    q, k, v = _qkv(b=2, lq=200, lk=77, heads=2, dh=64)  # neither length a multiple of the 128 tile
    with jax.default_matmul_precision("highest"):
        out = kernels.dot_product_attention(q, k, v, kernel="pallas_tpu")
        expected = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@needs_libtpu
def test_auto_on_tpu_is_flash_attention_for_long_keys_without_a_dense_mask():
    mesh = _topology_mesh()
    abstract = lambda length: jax.ShapeDtypeStruct((4, length, 2, 64), jnp.float32,
                                                   sharding=NamedSharding(mesh, PartitionSpec()))
    q, short = abstract(kernels.PALLAS_MIN_KEYS), abstract(77)  # cross-view self-attention; text keys
    causal = jnp.tril(jnp.ones((q.shape[1],) * 2, bool))[None, None]  # CLIP text's kind of mask
    lowered = lambda fn, *args: jax.jit(fn).lower(*args).as_text()
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        flash = lowered(lambda q: kernels.dot_product_attention(q, q, q), q)
        masked = lowered(lambda q: kernels.dot_product_attention(q, q, q, mask=causal), q)
        cross = lowered(lambda q, k: kernels.dot_product_attention(q, k, k), q, short)
    assert "tpu_custom_call" in flash
    assert "tpu_custom_call" not in masked and "tpu_custom_call" not in cross


@needs_libtpu
def test_pallas_tpu_spatial_transformer_compiles_for_a_tpu_topology_forward_and_backward():
    mesh = _topology_mesh()
    layer = SpatialTransformer3D(32, 2, 16, num_frames=4, attention_kernel="pallas_tpu")
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((8, 8, 8, 32), (8, 77, 32), (8, 4, 32))]
    params, specs = sharding.abstract_state(layer.init, mesh, sharding.DEFAULT_RULES, jax.random.key(0), *shapes)
    params = jax.tree.map(lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=spec), params, specs)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    x, context, tokens = (jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rows) for s in shapes)
    single_view = jax.ShapeDtypeStruct((2,), jnp.bool_, sharding=NamedSharding(mesh, PartitionSpec()))  # 2D mode
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        loss = lambda p, x, c, t, s: jnp.sum(layer.apply(p, x, c, t, 0.7, single_view=s))
        lowered = jax.jit(jax.value_and_grad(loss)).lower(params, x, context, tokens, single_view)
        assert lowered.as_text().count("tpu_custom_call") >= 4  # attn1, attn2 text + image, and their backward
        lowered.compile()


@pytest.mark.slow
@needs_libtpu
def test_pallas_tpu_tiny_unet_compiles_for_a_tpu_topology_forward_and_backward():
    mesh = _topology_mesh()
    config = UNetConfig.from_config(_tiny_config(attention="pallas_tpu"))
    model = MultiViewUNet(config)
    shapes, shardings = sharding.abstract_state(lambda: init_params(config, jax.random.key(0)), mesh)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    inputs = {name: None if value is None else jax.ShapeDtypeStruct(
        value.shape, value.dtype, sharding=rows if value.ndim else NamedSharding(mesh, PartitionSpec()))
        for name, value in dummy_inputs(config, batch_size=1, num_image_tokens=4).items()}
    loss = lambda p, inputs: jnp.mean(jnp.square(model.apply({"params": p}, **inputs)))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        lowered = jax.jit(jax.value_and_grad(loss)).lower(params, inputs)
        assert "tpu_custom_call" in lowered.as_text()
        lowered.compile()


def _tiny_config(**runtime):
    cfg = get_config("size=tiny")
    cfg.runtime.update(runtime)
    return cfg


def _runs_here(kernel: str) -> bool:
    try:
        kernels.resolve_kernel(kernel, BACKEND)
    except kernels.AttentionKernelError:
        return False
    return True


def _topology_mesh():
    from jax.experimental import topologies
    # Compile-only: no TPU is attached, so a second libtpu user (another test process) is harmless.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
    return sharding.make_mesh(data=1, fsdp=-1, tensor=1, devices=topology.devices)
