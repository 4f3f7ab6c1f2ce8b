"""LGM's camera convention: the input rays (Plücker embeddings) and the orbit cameras the Gaussians are rendered from.

What LGM does (official `core/options.py`, `core/models.py` `prepare_default_rays`, `core/utils.py` `get_rays`, infer.py):
- Cameras orbit the origin at radius 1.5 (`cam_radius`) with vertical FOV 49.1 deg (`fovy`), near 0.5, far 2.5; poses
  come from kiui's `orbit_camera(elevation, azimuth)` in OpenGL axes, where a POSITIVE elevation puts the camera
  BELOW the object (y = -sin(elevation)): inputs/camera.py `orbit_camera` is that function.
- The 4 input views sit at azimuths 0, 90, 180, 270. An MVDream-layout sampler (ours, MV-RAG's, ImageDream's) returns
  its views in an order whose view 1 is LGM's azimuth 0: LGM feeds `[views[1], views[2], views[3], views[0]]`
  (`MVDREAM_TO_LGM`).
- Each input pixel gets the ray (o, d) through its centre, embedded as (o x d, d): 6 channels after the 3 RGB
  channels, which are resized to `input_size` (bilinear, no antialias) and ImageNet-normalised.
- Renders use the same orbit with the pose's y and z axes flipped (OpenGL -> the rasterizer's OpenCV-style camera:
  x right, y down, z forward), world-to-camera = inverse(pose).

Elevation. LGM's own scripts generate and reconstruct at elevation 0 (`prepare_default_rays(elevation=0)`, infer.py
renders at 0). MV-RAG generates at elevation 15 by default (camera above the object, its `get_camera(-elevation)`),
so we PASS THE GENERATION ELEVATION THROUGH: the rays are built at kiui elevation `-generation_elevation`, the
geometry the views were actually drawn from (`lgm_elevation`). LGM was trained on elevation-0 inputs with camera
jitter, so 15 deg is inside what it saw; feeding elevation-0 rays for 15-deg views (LGM's default) tilts the object.
Renders for re-rendered evaluation use the same elevation by default (a circle at the generation elevation).
"""

import jax
import numpy as np

from mvrag_jax.inputs.camera import orbit_camera

FOVY = 49.1
CAM_RADIUS = 1.5
ZNEAR, ZFAR = 0.5, 2.5
INPUT_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
MVDREAM_TO_LGM = (1, 2, 3, 0)  # LGM input view i is MVDream-layout view MVDREAM_TO_LGM[i]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def lgm_elevation(generation_elevation: float) -> float:
    """kiui elevation of views generated at `generation_elevation` (degrees, > 0 = camera above, MV-RAG's sign)."""
    return -float(generation_elevation)


def focal_length(size: int, fovy: float = FOVY) -> float:
    """Pixels: size / 2 / tan(fovy / 2) (the same for x and y: LGM's images are square)."""
    return size * 0.5 / np.tan(0.5 * np.deg2rad(fovy))


def rays(pose: np.ndarray, size: int, fovy: float = FOVY) -> tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions [size, size, 3] through each pixel centre of an OpenGL camera-to-world `pose`."""
    focal = focal_length(size, fovy)
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")          # row, column
    dirs = np.stack([(x - size * 0.5 + 0.5) / focal, -(y - size * 0.5 + 0.5) / focal, -np.ones_like(x, float)], -1)
    d = dirs @ pose[:3, :3].astype(np.float64).T                                  # [h, w, 3]
    d = d / np.sqrt(np.maximum(np.sum(d * d, -1, keepdims=True), 1e-20))
    o = np.broadcast_to(pose[:3, 3].astype(np.float64), d.shape)
    return o.astype(np.float32), d.astype(np.float32)


def plucker_rays(elevation: float, size: int, fovy: float = FOVY, radius: float = CAM_RADIUS) -> np.ndarray:
    """The 4 input views' ray embeddings [4, size, size, 6] = (o x d, d), at kiui `elevation` (see `lgm_elevation`)."""
    out = []
    for azimuth in INPUT_AZIMUTHS:
        o, d = rays(orbit_camera(elevation, azimuth, radius), size, fovy)
        out.append(np.concatenate([np.cross(o, d), d], axis=-1))
    return np.stack(out).astype(np.float32)


def world_to_camera(elevation: float, azimuth: float, radius: float = CAM_RADIUS) -> np.ndarray:
    """[4, 4] world -> camera (x right, y down, z forward: depth > 0 in front) of the render orbit (official
    infer.py: pose[:3, 1:3] *= -1, then inverse; its `cam_view` is this matrix transposed)."""
    pose = orbit_camera(elevation, azimuth, radius).astype(np.float64)
    pose[:3, 1:3] *= -1
    return np.linalg.inv(pose).astype(np.float32)


def orbit_views(elevation: float, azimuths, radius: float = CAM_RADIUS) -> np.ndarray:
    """World-to-camera matrices [V, 4, 4] on a circle at kiui `elevation`."""
    return np.stack([world_to_camera(elevation, float(a), radius) for a in azimuths])


def circle_azimuths(count: int = 18, start: float = 0.0) -> np.ndarray:
    """`count` azimuths evenly around the circle (the paper's 18 re-rendered views: every 20 degrees)."""
    return start + np.arange(count) * (360.0 / count)


def projection_matrix(fovy: float = FOVY, znear: float = ZNEAR, zfar: float = ZFAR) -> np.ndarray:
    """The official GaussianRenderer's proj_matrix (row-vector convention: p_view @ P), for cross-checks."""
    tan_half = np.tan(0.5 * np.deg2rad(fovy))
    proj = np.zeros((4, 4), np.float32)
    proj[0, 0] = proj[1, 1] = 1 / tan_half
    proj[2, 2] = (zfar + znear) / (zfar - znear)
    proj[3, 2] = -(zfar * znear) / (zfar - znear)
    proj[2, 3] = 1
    return proj


def lgm_inputs(views: np.ndarray, elevation: float, input_size: int, fovy: float = FOVY) -> np.ndarray:
    """MVDream-layout views [b, 4, H, W, 3] in [0, 1] -> LGM inputs [b, 4, input_size, input_size, 9]: reordered
    (`MVDREAM_TO_LGM`), resized (bilinear, align_corners=False, no antialias: F.interpolate), ImageNet-normalised,
    then the Plücker rays at kiui `elevation`."""
    views = np.asarray(views, np.float32)
    if views.ndim != 5 or views.shape[1] != 4 or views.shape[-1] != 3:
        raise ValueError(f"views have shape {views.shape}; expected [b, 4, H, W, 3] RGB in [0, 1] (MVDream order)")
    views = views[:, list(MVDREAM_TO_LGM)]
    b, v, h, w, _ = views.shape
    if (h, w) != (input_size, input_size):
        views = np.asarray(jax.image.resize(views, (b, v, input_size, input_size, 3), "bilinear", antialias=False))
    views = (views - IMAGENET_MEAN) / IMAGENET_STD
    ray_emb = np.broadcast_to(plucker_rays(elevation, input_size, fovy), (b, 4, input_size, input_size, 6))
    return np.concatenate([views, ray_emb], axis=-1).astype(np.float32)
