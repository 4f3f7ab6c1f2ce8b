import numpy as np
import pytest

from mvrag_jax.inputs.camera import get_camera, orbit_camera
from tests.conftest import CASES


def test_matches_official_cameras():
    case = np.load(CASES / "camera.npz")
    for key in case.files:
        if key.startswith("camera_"):
            tag = key[len("camera_"):]
            frames, elevation, azimuth = (int(v) for v in case[f"params_{tag}"])
            ours = get_camera(frames, elevation, azimuth, blender_coord=tag != "noblender")
            np.testing.assert_array_equal(ours, case[key])


@pytest.mark.parametrize("elevation,azimuth", [(0, 0), (30, 90), (-5, 200)])
def test_pose_looks_at_origin_and_is_orthonormal(elevation, azimuth):
    pose = orbit_camera(-elevation, azimuth).astype(np.float64)
    rotation, position = pose[:3, :3], pose[:3, 3]
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
    # OpenGL cameras look down -z: the third column points from the origin to the camera.
    np.testing.assert_allclose(rotation[:, 2], position / np.linalg.norm(position), atol=1e-6)
    # Positive elevation (camera above the object) means positive y.
    assert np.sign(position[1]) == np.sign(elevation) or elevation == 0
