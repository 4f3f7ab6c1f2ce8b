"""The kernels behind `layers.attention`, chosen by the runtime setting `runtime.attention` (a static model field).

    out = dot_product_attention(q, k, v, kernel="chunked", scale=None)     # q [b, lq, heads, dh], k/v [b, lk, ...]

Kernels, all exact softmax(q k^T * scale) v with float32 logits and softmax:
  * "auto": "chunked" on CPU, "pallas_tpu" on TPU for PALLAS_MIN_KEYS keys or more (else "xla"), "xla" elsewhere
    (the default of every config). On TPU the UNet's cross-view self-attention (4 views x 1024 tokens at 256 px)
    needs flash attention: XLA's logits for one such layer's forward + backward take 1.41 GiB where Pallas takes
    0.18 GiB.
  * "xla": `jax.nn.dot_product_attention(implementation="xla")`, logits [b, heads, lq, lk] in one piece.
  * "chunked": the same maths over blocks of query rows (`lax.map`), each block's logits [b, heads, block, lk] small
    enough to stay in cache. Rows are independent, so the result equals "xla"'s to rounding. On CPU it is ~2x faster
    than "xla" for the UNet's cross-view self-attention (4 views x 32 x 32 = 4096 tokens); see tools/bench_vs_torch.py.
  * "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only (cuDNN flash attention, bf16/fp16).
  * "pallas_tpu": Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`), TPU only; under an
    active mesh (`jax.set_mesh`) it runs per device through `shard_map` over the batch (and heads) mesh axes that the
    active logical rules give BATCH (and HEADS). It lowers for compile-only TPU topologies too.
"""

import jax
import jax.numpy as jnp

from mvrag_jax.sharding import BATCH, HEADS, activation_spec
from mvrag_jax.errors import MvragError

KERNELS = ("auto", "xla", "chunked", "cudnn", "pallas_tpu")
_PLATFORMS = {"cudnn": ("gpu", "cuda", "rocm"), "pallas_tpu": ("tpu",)}
# Largest logits block of "chunked", in float32 elements per call of the block body (4 MiB: L2-sized).
CHUNK_LOGITS = 1 << 20
MIN_CHUNK_ROWS = 16  # below this, per-block overhead beats the cache win: compute in one piece
PALLAS_TILE = 128    # query/key tile of the Pallas TPU kernel
PALLAS_MIN_KEYS = 512  # "auto" on TPU: flash attention from this many keys on (the cross-view self-attention)


class AttentionKernelError(MvragError, ValueError):
    """An unknown attention kernel, or one the backend cannot run."""


def check_kernel(kernel: str, where: str = "model", error: type[Exception] = AttentionKernelError) -> None:
    """Config-time check of a kernel name (the backend is checked when the model is traced)."""
    if kernel not in KERNELS:
        raise error(f"{where} attention={kernel!r} is unknown; set runtime.attention to one of {', '.join(KERNELS)}")


def _platform() -> str:
    """Platform the computation is built for: the active mesh's devices (so an AOT compile for a TPU topology counts
    as TPU on a CPU host), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)  # set by jax.set_mesh(mesh)
    return jax.default_backend() if device is None else device.platform


def resolve_kernel(kernel: str, platform: str) -> str:
    """The concrete kernel for `platform`; an error naming the fix when the platform cannot run it."""
    check_kernel(kernel)
    if kernel == "auto":
        return {"cpu": "chunked", "tpu": "pallas_tpu"}.get(platform, "xla")
    if kernel in _PLATFORMS and platform not in _PLATFORMS[kernel]:
        need = "a GPU" if kernel == "cudnn" else "a TPU"
        raise AttentionKernelError(f"attention={kernel!r} needs {need} but the computation is built for {platform!r}; "
                                   "set runtime.attention=xla (or auto)")
    return kernel


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, kernel: str = "auto",
                          scale: float | None = None, mask: jax.Array | None = None,
                          segment_ids: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """softmax(q k^T * scale) v: q [b, lq, heads, dh], k/v [b, lk, heads, dh] -> [b, lq, heads, dh] in q's dtype.

    `scale` defaults to 1/sqrt(dh); `mask` (bool, broadcastable to [b, heads, lq, lk]) keeps True positions.
    `segment_ids` (q_ids [b, lq], kv_ids [b, lk] int) keeps the pairs with equal ids: the block-diagonal masks that
    every kernel can run (Pallas TPU flash attention takes ids, not masks). Every query must share an id with some
    key.
    """
    requested, kernel = kernel, resolve_kernel(kernel, _platform())
    if requested == "auto" and kernel == "pallas_tpu" and (mask is not None or k.shape[1] < PALLAS_MIN_KEYS):
        # A dense mask (CLIP text's causal one): flash attention takes segment ids only. Short keys (text and image
        # tokens of the cross-attention): XLA's logits are small, while the flash kernel pads the keys to 128 and
        # keeps float32 row statistics 128 lanes wide for its backward: [b, heads, lq, 128] x 2 per call.
        kernel = "xla"
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if kernel == "pallas_tpu":
        return _pallas_tpu(q, k, v, scale, mask, segment_ids)
    if segment_ids is not None:
        if mask is not None:
            raise AttentionKernelError("pass a mask or segment_ids, not both")
        mask = segment_mask(*segment_ids)
    if kernel == "chunked":
        return _chunked(q, k, v, scale, mask)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation=kernel)


def segment_mask(q_ids: jax.Array, kv_ids: jax.Array) -> jax.Array:
    """Segment ids [b, lq], [b, lk] -> the bool mask [b, 1, lq, lk] they stand for."""
    return (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]


def _exact(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, mask: jax.Array | None) -> jax.Array:
    """The "xla" maths spelled out (same order of operations as jax.nn's xla path)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # [b, h, lq, lk]
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # [b, lq, h, dh]


def _chunk_rows(b: int, lq: int, heads: int, lk: int) -> int:
    """Largest divisor of lq whose logits block b*heads*rows*lk fits CHUNK_LOGITS (lq itself when all of it fits)."""
    limit = max(1, CHUNK_LOGITS // (b * heads * lk))
    if lq <= limit:
        return lq
    return max((rows for rows in range(1, limit + 1) if lq % rows == 0), default=1)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, mask: jax.Array | None) -> jax.Array:
    b, lq, heads, dh = q.shape
    rows = _chunk_rows(b, lq, heads, k.shape[1])
    if mask is not None or rows == lq or rows < MIN_CHUNK_ROWS:
        return _exact(q, k, v, scale, mask)
    # Heads-major layouts once, outside the loop (inside, XLA would transpose k and v again for every block).
    k_t, v_t = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # [b, h, dh, lk], [b, h, lk, dh]
    blocks = q.reshape(b, lq // rows, rows, heads, dh).transpose(1, 0, 3, 2, 4)  # [n, b, h, rows, dh]

    def block_attention(q_block: jax.Array) -> jax.Array:  # same maths as _exact
        logits = jnp.einsum("bhqd,bhdk->bhqk", q_block, k_t, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [b, h, rows, lk]
        return jnp.einsum("bhqk,bhkd->bhqd", probs, v_t)  # [b, h, rows, dh]

    out = jax.lax.map(block_attention, blocks)  # [n, b, h, rows, dh]
    return out.transpose(1, 0, 3, 2, 4).reshape(b, lq, heads, dh)


def _pallas_tpu(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, mask: jax.Array | None,
                segment_ids: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    if mask is not None:
        raise AttentionKernelError("attention='pallas_tpu' takes segment ids, not a mask (this layer passes one); set "
                                   "runtime.attention=xla for this model")
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash  # TPU-only kernel: import on use

    # The kernel tiles q and k/v in blocks of 128: pad both lengths up (text context is 77 tokens, image tokens
    # 4-64) and mask the padded keys out with segment ids: real tokens keep theirs (all 0 without segment_ids),
    # padded keys get -1 (no query has it), padded queries -2 (their rows are sliced off).
    blocks = pallas_flash.BlockSizes(*(PALLAS_TILE,) * 3, block_b=1, **{
        name: PALLAS_TILE for name in ("block_q_major_dkv", "block_k_major_dkv", "block_k_dkv", "block_q_dkv",
                                       "block_k_major_dq", "block_k_dq", "block_q_dq")})

    def kernel(q, k, v, q_ids, kv_ids):
        lq, lk = q.shape[1], k.shape[1]
        pad_to = lambda t: jnp.pad(t, ((0, 0), (0, -t.shape[1] % PALLAS_TILE), (0, 0), (0, 0)))
        heads_first = lambda t: pad_to(t).swapaxes(1, 2)  # the kernel's layout: [b, heads, l_padded, dh]
        pad_ids = lambda ids, value: jnp.pad(ids, ((0, 0), (0, -ids.shape[1] % PALLAS_TILE)), constant_values=value)
        segments = pallas_flash.SegmentIds(q=pad_ids(q_ids, -2), kv=pad_ids(kv_ids, -1))
        out = pallas_flash.flash_attention(heads_first(q), heads_first(k), heads_first(v), segment_ids=segments,
                                           sm_scale=scale, block_sizes=blocks)
        return out.swapaxes(1, 2)[:, :lq]  # [b, lq, heads, dh]

    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    q_ids, kv_ids = segment_ids or (jnp.zeros((b, lq), jnp.int32), jnp.zeros((b, lk), jnp.int32))
    q_ids, kv_ids = (jnp.broadcast_to(ids, (b, n)).astype(jnp.int32) for ids, n in ((q_ids, lq), (kv_ids, lk)))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, q_ids, kv_ids)
    # q, k and v share batch and heads (the only split dims), so one spec fits all three and the output.
    spec = activation_spec((BATCH, None, HEADS, None), q.shape, mesh)
    ids_spec = jax.sharding.PartitionSpec(spec[0], None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, ids_spec, ids_spec), out_specs=spec,
                         check_vma=False)(q, k, v, q_ids, kv_ids)
