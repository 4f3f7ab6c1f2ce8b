"""A small numpy z-buffer rasteriser: renders a `shapes.Mesh` from a flattened camera-to-world pose.

The pose is exactly what `mvrag_jax.inputs.camera.get_camera` returns for the UNet (Blender world axes, OpenGL camera axes:
the camera looks down its -z, +y is up in the image), so a render and its conditioning camera always agree.
Lights are fixed in the world, so shading changes with the viewpoint the way a real object's would.
"""

import numpy as np

from data_pipelines.shapes import Mesh
from mvrag_jax.errors import MvragError

# (direction towards the light in world axes, intensity); a key light above the azimuth-0 side and a weak fill.
_LIGHTS = (((0.35, -0.55, 0.75), 0.65), ((-0.6, 0.45, 0.25), 0.25))
_AMBIENT = 0.3
_NEAR = 1e-3


class CameraInsideObjectError(MvragError, ValueError):
    pass


def project(points: np.ndarray, camera: np.ndarray, *, size: int, fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """World points [n, 3] -> (pixel xy [n, 2] with (0, 0) the top-left corner, depth [n] along the view axis)."""
    cam_to_world = np.asarray(camera, np.float64).reshape(4, 4)
    world_to_cam = np.linalg.inv(cam_to_world)
    local = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]  # [n, 3] OpenGL camera axes
    depth = -local[:, 2]
    focal = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    safe = np.where(depth > _NEAR, depth, _NEAR)
    xy = np.stack([0.5 * size + focal * local[:, 0] / safe, 0.5 * size - focal * local[:, 1] / safe], axis=-1)
    return xy, depth


def _face_shades(mesh: Mesh) -> np.ndarray:
    """Lambert shading per face [t, 3] in [0, 1] from outward face normals."""
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    light = np.full(len(normals), _AMBIENT)
    for direction, intensity in _LIGHTS:
        direction = np.asarray(direction) / np.linalg.norm(direction)
        light += intensity * np.maximum(normals @ direction, 0.0)
    return np.clip(light[:, None] * np.asarray(mesh.colour)[None], 0.0, 1.0)


def _rasterise(xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, shades: np.ndarray,
               image: np.ndarray) -> np.ndarray:
    """Fill `image` [s, s, 3] in place; perspective-correct depth test via interpolated 1/depth. Returns the
    coverage [s, s] bool (pixels the mesh covers)."""
    size = image.shape[0]
    inv_depth_buffer = np.zeros((size, size))  # 1/depth; 0 means empty (infinitely far)
    for face, shade in zip(faces, shades):
        (x0, y0), (x1, y1), (x2, y2) = xy[face]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if abs(area) < 1e-12:
            continue
        left, right = max(int(np.floor(min(x0, x1, x2))), 0), min(int(np.ceil(max(x0, x1, x2))), size)
        top, bottom = max(int(np.floor(min(y0, y1, y2))), 0), min(int(np.ceil(max(y0, y1, y2))), size)
        if left >= right or top >= bottom:
            continue
        px, py = np.meshgrid(np.arange(left, right) + 0.5, np.arange(top, bottom) + 0.5)  # pixel centres
        w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / area
        w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        inv_depth = w0 / depth[face[0]] + w1 / depth[face[1]] + w2 / depth[face[2]]
        window = inv_depth_buffer[top:bottom, left:right]
        nearer = inside & (inv_depth > window)
        window[nearer] = inv_depth[nearer]
        image[top:bottom, left:right][nearer] = shade
    return inv_depth_buffer > 0


def render(mesh: Mesh, camera: np.ndarray, *, size: int, fov_deg: float = 50.0,
           background: int | tuple[int, int, int] | None = 127, supersample: int = 2) -> np.ndarray:
    """RGB uint8 [size, size, 3] of `mesh` seen from `camera` ([16] or [4, 4] camera-to-world, as get_camera gives).

    `background` is a grey level or an RGB triple (0-255), or None: RGBA [size, size, 4] with straight alpha = the
    covered fraction of each pixel (the loader composites it over a per-object grey, data_pipelines/background.py).
    `fov_deg` is the full vertical (= horizontal) field of view.

    Renders at `supersample` times the size and box-filters down, which anti-aliases edges (and gives the alpha).
    """
    cam_to_world = np.asarray(camera, np.float64).reshape(4, 4)
    big = size * supersample
    xy, depth = project(mesh.vertices, cam_to_world, size=big, fov_deg=fov_deg)
    if np.any(depth <= _NEAR):
        raise CameraInsideObjectError(
            f"camera at {cam_to_world[:3, 3].round(3).tolist()} is inside or behind part of the mesh (min depth "
            f"{depth.min():.3f}); shrink the object scale or move the camera further out")
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    front = np.sum(normals * (cam_to_world[:3, 3] - v0), axis=-1) > 0  # back faces of a closed mesh are hidden
    fill = 0 if background is None else background
    image = np.broadcast_to(np.asarray(fill, np.float64) / 255.0, (big, big, 3)).copy()
    covered = _rasterise(xy, depth, mesh.faces[front], _face_shades(mesh)[front], image)
    image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    if background is not None:
        return np.round(image * 255.0).astype(np.uint8)
    alpha = covered.reshape(size, supersample, size, supersample).mean(axis=(1, 3))  # [size, size]
    colour = image / np.maximum(alpha, 1e-12)[..., None]  # un-premultiply: the mean colour of the covered part
    rgba = np.concatenate([np.where(alpha[..., None] > 0, colour, 0.0), alpha[..., None]], axis=-1)
    return np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)


def silhouette(image: np.ndarray, background: int = 127) -> np.ndarray:
    """Boolean mask [h, w] of pixels that differ from the flat background (tests and previews use it)."""
    return np.any(np.abs(image.astype(np.int16) - background) > 2, axis=-1)
