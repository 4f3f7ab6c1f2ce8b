"""Orbit cameras in the convention the MV-RAG UNet was trained with.

The official code builds poses with kiui's `orbit_camera(-elevation, azimuth)` (OpenGL axes) and then converts them to
Blender axes. Both the sampler (camera embedding) and the synthetic renderer in `data_pipelines/` use these functions,
so a render and its conditioning camera can never disagree.
"""

import numpy as np


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(np.maximum(np.sum(v * v, axis=-1, keepdims=True), 1e-20))


def orbit_camera(elevation_deg: float, azimuth_deg: float, radius: float = 1.0) -> np.ndarray:
    """Camera-to-world pose [4, 4] (float32, OpenGL axes) looking at the origin.

    `elevation_deg` follows kiui: positive values put the camera BELOW the object (y = -sin(elevation)); callers that
    think of elevation as "camera above the object" pass its negation, as `get_camera` does.
    """
    elevation, azimuth = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    campos = radius * np.array(
            [np.cos(elevation) * np.sin(azimuth), -np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])  # float64
    forward = _normalize(campos)
    right = _normalize(np.cross(np.array([0.0, 1.0, 0.0]), forward))
    up = _normalize(np.cross(forward, right))
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3] = np.stack([right, up, forward], axis=1)
    pose[:3, 3] = campos
    return pose


def view_azimuths(num_frames: int, azimuth_start: float = 0.0, azimuth_span: float = 360.0) -> np.ndarray:
    """Azimuths (degrees) of `num_frames` evenly spaced views, exactly as the official `np.arange` produces them."""
    return np.arange(azimuth_start, azimuth_span + azimuth_start, azimuth_span / num_frames)


def get_camera(num_frames: int, elevation: float = 15.0, azimuth_start: float = 0.0, azimuth_span: float = 360.0,
                             blender_coord: bool = True) -> np.ndarray:
    """Flattened poses [num_frames, 16] (float32) that condition the UNet; `elevation` > 0 looks down on the object."""
    cameras = []
    for azimuth in view_azimuths(num_frames, azimuth_start, azimuth_span):
        pose = orbit_camera(-elevation, azimuth)
        if blender_coord:  # OpenGL -> Blender: z' = y, y' = -z
            pose[2] *= -1
            pose[[1, 2]] = pose[[2, 1]]
        cameras.append(pose.reshape(16))
    return np.stack(cameras).astype(np.float32)
