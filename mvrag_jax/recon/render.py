"""A 3D Gaussian-splatting renderer in JAX: LGM's rasterizer (graphdeco diff-gaussian-rasterization, ashawkey's
fork with alpha output) at SH degree 0 with precomputed colours, as LGM calls it, without a CUDA extension.

    settings = RenderSettings(height=256, width=256)
    image, alpha = render(gaussians, world_to_camera, settings)      # [N, 14], [4, 4] -> [H, W, 3], [H, W]
    images, alphas = render_views(gaussians, views, settings)        # [b, N, 14], [b, V, 4, 4] -> [b, V, H, W, ...]

Gaussians are LGM's activated rows [N, 14]: position 0:3, opacity 3, scale 4:7, rotation 7:11 (quaternion w, x, y, z),
rgb 11:14. Cameras are world-to-camera matrices with x right, y down, z forward (recon/cameras.py `orbit_views`).

The maths is the CUDA rasterizer's, step by step:
- a Gaussian is culled when its view depth is <= 0.2; its covariance R S S^T R^T (S scaled by `scale_modifier`) is
  projected with the EWA Jacobian, the view-space mean clamped to 1.3x the FOV first; 0.3 px^2 is added to the
  diagonal (the low-pass filter); the conic is its inverse; the radius is ceil(3 sqrt(largest eigenvalue)), the
  eigenvalues from mid +- sqrt(max(0.1, mid^2 - det));
- the Gaussian reaches the 16x16 tiles of its radius' bounding rectangle (`getRect`), and only those: this tile
  truncation is the CUDA code's, kept so both draw the same set per pixel;
- per pixel (centre at integer coordinates), front to back in depth order: power = -conic(d)/2, skipped if > 0;
  alpha = min(0.99, opacity exp(power)), skipped if < 1/255; compositing stops before the Gaussian that would take
  the transmittance below 1e-4; colour = sum(c alpha T) + T background, alpha = 1 - T.

Static shapes: each tile's depth-ordered list of Gaussians is compacted into a fixed [tiles, N] table, then
composited `chunk` Gaussians at a time in a `lax.while_loop` that stops when every pixel is saturated or every list
is used up, so the result is exact (no per-tile cap) and memory is tiles x pixels x chunk. `render_views` maps
over views `view_batch` at a time (memory) and vmaps over objects. Where CUDA sorts by (tile, depth) with a radix
sort, ties in depth keep the Gaussians' index order here; float sums may differ in the last bits.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.recon.cameras import FOVY

TILE = 16                 # BLOCK_X = BLOCK_Y of the CUDA rasterizer
NEAR_CULL = 0.2           # in_frustum: p_view.z <= 0.2 is culled
LOW_PASS = 0.3            # px^2 added to the 2D covariance diagonal
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0
MIN_TRANSMITTANCE = 1e-4


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """Image size, field of view (vertical = horizontal: square pixels, tan_fovx = tan_fovy as LGM passes them),
    background colour, Gaussian scale multiplier and the compositing chunk."""

    height: int = 256
    width: int = 256
    fovy: float = FOVY
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # LGM renders on white
    scale_modifier: float = 1.0
    chunk: int = 64

    @property
    def tan_half_fov(self) -> float:
        return float(np.tan(0.5 * np.deg2rad(self.fovy)))

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles (rows, columns)."""
        return (self.height + TILE - 1) // TILE, (self.width + TILE - 1) // TILE


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
    """Unit quaternions [..., 4] (w, x, y, z) -> rotation matrices [..., 3, 3] (normalised first, as CUDA does)."""
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = (q[..., i] for i in range(4))
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def covariance_3d(scale: jax.Array, rotation: jax.Array, modifier: float = 1.0) -> jax.Array:
    """R S S^T R^T [N, 3, 3] of scales [N, 3] and quaternions [N, 4]."""
    m = quaternion_to_matrix(rotation) * (modifier * scale)[:, None, :]                 # R S
    return m @ jnp.swapaxes(m, -1, -2)


def project(gaussians: jax.Array, view: jax.Array, settings: RenderSettings) -> dict[str, jax.Array]:
    """Screen-space Gaussians: mean [N, 2] (pixels), conic [N, 3] (a, b, c of the inverse 2D covariance), depth [N],
    radius [N] and the tile rectangle [N, 4] (x0, y0, x1, y1; half-open), all zero-sized for culled Gaussians."""
    h, w = settings.height, settings.width
    tan_half = settings.tan_half_fov
    fx, fy = w / (2 * tan_half), h / (2 * tan_half)
    means = gaussians[:, 0:3]
    p_view = means @ view[:3, :3].T + view[:3, 3]                                       # [N, 3]
    depth = p_view[:, 2]
    # Perspective division as CUDA: p_proj = P p / (w + 1e-7), then ndc -> pixel ((v + 1) S - 1) / 2.
    inv_w = 1.0 / (depth + 1e-7)
    mean2d = jnp.stack([((p_view[:, 0] / tan_half * inv_w + 1) * w - 1) * 0.5,
                        ((p_view[:, 1] / tan_half * inv_w + 1) * h - 1) * 0.5], -1)
    safe_z = jnp.where(depth > NEAR_CULL, depth, 1.0)
    lim = 1.3 * tan_half
    tx = jnp.clip(p_view[:, 0] / safe_z, -lim, lim) * safe_z
    ty = jnp.clip(p_view[:, 1] / safe_z, -lim, lim) * safe_z
    zeros = jnp.zeros_like(safe_z)
    jac = jnp.stack([jnp.stack([fx / safe_z, zeros, -fx * tx / safe_z ** 2], -1),
                     jnp.stack([zeros, fy / safe_z, -fy * ty / safe_z ** 2], -1)], -2)   # [N, 2, 3]
    t = jac @ view[:3, :3]                                                              # [N, 2, 3]
    sigma = covariance_3d(gaussians[:, 4:7], gaussians[:, 7:11], settings.scale_modifier)
    cov = t @ sigma @ jnp.swapaxes(t, -1, -2)                                           # [N, 2, 2]
    a, b, c = cov[:, 0, 0] + LOW_PASS, cov[:, 0, 1], cov[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    safe_det = jnp.where(det == 0, 1.0, det)
    conic = jnp.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    mid = 0.5 * (a + c)
    root = jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
    radius = jnp.ceil(3.0 * jnp.sqrt(jnp.maximum(mid + root, mid - root)))
    grid_y, grid_x = settings.grid
    # getRect: (int) truncation toward zero, then clamped to the grid (clip first so the int cast cannot overflow).
    to_tile = lambda v, n: jnp.clip(jnp.trunc(jnp.clip(v, -TILE, (n + 1) * TILE) / TILE), 0, n).astype(jnp.int32)
    rect = jnp.stack([to_tile(mean2d[:, 0] - radius, grid_x), to_tile(mean2d[:, 1] - radius, grid_y),
                      to_tile(mean2d[:, 0] + radius + TILE - 1, grid_x),
                      to_tile(mean2d[:, 1] + radius + TILE - 1, grid_y)], -1)
    visible = (depth > NEAR_CULL) & (det != 0) & ((rect[:, 2] - rect[:, 0]) * (rect[:, 3] - rect[:, 1]) > 0)
    rect = jnp.where(visible[:, None], rect, 0)
    return {"mean2d": mean2d, "conic": conic, "depth": depth, "radius": jnp.where(visible, radius, 0.0),
            "rect": rect, "visible": visible}


def _tile_lists(rect: jax.Array, settings: RenderSettings) -> tuple[jax.Array, jax.Array]:
    """For Gaussians already in depth order: lists [tiles, N] of the indices each tile draws, in order, padded with
    N; and the count per tile [tiles]."""
    grid_y, grid_x = settings.grid
    n = rect.shape[0]
    ty, tx = jnp.meshgrid(jnp.arange(grid_y), jnp.arange(grid_x), indexing="ij")
    ty, tx = ty.reshape(-1, 1), tx.reshape(-1, 1)                                       # [tiles, 1]
    hit = ((rect[None, :, 0] <= tx) & (tx < rect[None, :, 2]) & (rect[None, :, 1] <= ty) & (ty < rect[None, :, 3]))
    rank = jnp.cumsum(hit, axis=1) - 1                                                  # [tiles, N]
    rows = jnp.broadcast_to(jnp.arange(hit.shape[0])[:, None], hit.shape)
    cols = jnp.where(hit, rank, n)                                                      # n: dropped
    lists = jnp.full(hit.shape, n, jnp.int32).at[rows, cols].set(
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), hit.shape), mode="drop")
    return lists, hit.sum(axis=1)


def render(gaussians: jax.Array, view: jax.Array, settings: RenderSettings) -> tuple[jax.Array, jax.Array]:
    """One view: Gaussians [N, 14], world-to-camera [4, 4] -> image [H, W, 3] (clamped to [0, 1] as LGM does) and
    alpha [H, W]."""
    gaussians = jnp.asarray(gaussians, jnp.float32)
    proj = project(gaussians, jnp.asarray(view, jnp.float32), settings)
    order = jnp.argsort(jnp.where(proj["visible"], proj["depth"], jnp.inf), stable=True)
    n = gaussians.shape[0]
    pad = lambda x, value=0.0: jnp.concatenate([x[order], jnp.full((1, *x.shape[1:]), value, x.dtype)])  # [N + 1, ...]
    mean2d, conic = pad(proj["mean2d"]), pad(proj["conic"])
    opacity = pad(jnp.where(proj["visible"], gaussians[:, 3], 0.0))                     # the pad entry: never drawn
    colour = pad(gaussians[:, 11:14])
    lists, counts = _tile_lists(proj["rect"][order], settings)
    grid_y, grid_x = settings.grid
    tiles, chunk = grid_y * grid_x, min(settings.chunk, n)
    pixel = jnp.arange(TILE * TILE)
    tile = jnp.arange(tiles)
    px = ((tile % grid_x) * TILE)[:, None] + (pixel % TILE)[None]                        # [tiles, pixels]
    py = ((tile // grid_x) * TILE)[:, None] + (pixel // TILE)[None]
    lists = jnp.pad(lists, ((0, 0), (0, -n % chunk)), constant_values=n)
    last = jnp.max(counts)

    def body(state):
        start, acc, trans, done = state
        idx = jax.lax.dynamic_slice_in_dim(lists, start, chunk, axis=1)                 # [tiles, chunk]
        dx = mean2d[idx, 0][:, None, :] - px[..., None]                                  # [tiles, pixels, chunk]
        dy = mean2d[idx, 1][:, None, :] - py[..., None]
        con = conic[idx][:, None]                                                        # [tiles, 1, chunk, 3]
        power = -0.5 * (con[..., 0] * dx * dx + con[..., 2] * dy * dy) - con[..., 1] * dx * dy
        alpha = jnp.minimum(MAX_ALPHA, opacity[idx][:, None, :] * jnp.exp(power))
        alpha = jnp.where((power > 0) | (alpha < MIN_ALPHA), 0.0, alpha)
        after = trans[..., None] * jnp.cumprod(1.0 - alpha, axis=-1)                      # T after each Gaussian
        before = jnp.concatenate([trans[..., None], after[..., :-1]], axis=-1)
        keep = (after >= MIN_TRANSMITTANCE) & ~done[..., None]                             # a prefix of the chunk
        weight = jnp.where(keep, alpha * before, 0.0)
        acc = acc + jnp.einsum("tpk,tkc->tpc", weight, colour[idx])
        trans = jnp.min(jnp.where(keep, after, trans[..., None]), axis=-1)
        done = done | (after[..., -1] < MIN_TRANSMITTANCE)
        return start + chunk, acc, trans, done

    def cond(state):
        start, _, _, done = state
        return (start < last) & ~jnp.all(done)

    init = (jnp.int32(0), jnp.zeros((tiles, TILE * TILE, 3)), jnp.ones((tiles, TILE * TILE)),
            jnp.zeros((tiles, TILE * TILE), bool))
    _, acc, trans, _ = jax.lax.while_loop(cond, body, init)
    image = acc + trans[..., None] * jnp.asarray(settings.background, jnp.float32)
    untile = lambda x: x.reshape(grid_y, grid_x, TILE, TILE, -1).transpose(0, 2, 1, 3, 4).reshape(
        grid_y * TILE, grid_x * TILE, -1)[:settings.height, :settings.width]
    return jnp.clip(untile(image), 0.0, 1.0), untile(1.0 - trans[..., None])[..., 0]


@functools.partial(jax.jit, static_argnames=("settings", "view_batch"))
def render_views(gaussians: jax.Array, views: jax.Array, settings: RenderSettings,
                 view_batch: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Gaussians [b, N, 14] and world-to-camera matrices [b, V, 4, 4] -> images [b, V, H, W, 3], alphas [b, V, H, W].

    Views run `view_batch` at a time (None: all at once); objects are vmapped. Jitted: one compile per shape."""
    if gaussians.ndim != 3 or gaussians.shape[-1] != 14 or views.shape[:1] != gaussians.shape[:1] \
            or views.shape[-2:] != (4, 4):
        raise ValueError(f"render_views: gaussians {gaussians.shape} and views {views.shape}; expected [b, N, 14] "
                         "(LGM's activated Gaussians) and [b, V, 4, 4] world-to-camera matrices")

    def one_object(g, vs):
        return jax.lax.map(lambda v: render(g, v, settings), vs, batch_size=view_batch or vs.shape[0])

    return jax.vmap(one_object)(gaussians, views)
