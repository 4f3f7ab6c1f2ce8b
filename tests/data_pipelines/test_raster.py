"""The rasteriser draws what get_camera's poses predict: positions, sizes, elevation sign, symmetry."""

import numpy as np
import pytest

from data_pipelines import raster, shapes
from mvrag_jax.inputs.camera import get_camera

SIZE, FOV = 64, 50.0


def _camera(elevation: float, azimuth: float) -> np.ndarray:
    return get_camera(1, elevation=elevation, azimuth_start=azimuth)[0]


def _ball(offset, radius: float = 0.08) -> shapes.Mesh:
    return shapes.make_mesh("sphere", "red", scale=2 * radius, offset=offset)


def _centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(raster.silhouette(image))
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # (x, y) in pixels, like raster.project


def _pinhole(point, camera) -> np.ndarray:
    """Independent projection: world -> camera (OpenGL: looks down -z, y up) -> pixels with y down."""
    world_to_camera = np.linalg.inv(camera.reshape(4, 4).astype(np.float64))
    x, y, z = world_to_camera[:3, :3] @ np.asarray(point) + world_to_camera[:3, 3]
    focal = SIZE / 2 / np.tan(np.deg2rad(FOV) / 2)
    return np.array([SIZE / 2 + focal * x / -z, SIZE / 2 - focal * y / -z])


@pytest.mark.parametrize("camera", list(get_camera(4, elevation=20.0, azimuth_start=30.0)) + [_camera(-5, 200)])
def test_projected_centre_matches_silhouette_centroid(camera):
    offset = (0.2, -0.1, 0.1)
    image = raster.render(_ball(offset), camera, size=SIZE, fov_deg=FOV, supersample=4)
    np.testing.assert_allclose(_centroid(image), _pinhole(offset, camera), atol=0.75)


def test_azimuth_moves_an_offset_ball_as_the_camera_orbits():
    ball = _ball((0.25, 0.0, 0.0))  # on the +x side of the object centre
    x = {az: _centroid(raster.render(ball, _camera(0, az), size=SIZE, fov_deg=FOV))[0] for az in (0, 90, 180, 270)}
    assert x[0] > SIZE / 2 + 5    # azimuth 0: camera on -y, +x is to the right
    assert x[180] < SIZE / 2 - 5  # seen from behind it is on the left
    assert abs(x[90] - SIZE / 2) < 1 and abs(x[270] - SIZE / 2) < 1  # in line with the camera at +-x
    near = raster.silhouette(raster.render(ball, _camera(0, 90), size=SIZE, fov_deg=FOV)).sum()
    far = raster.silhouette(raster.render(ball, _camera(0, 270), size=SIZE, fov_deg=FOV)).sum()
    assert near > 1.3 * far  # the camera at azimuth 90 sits on the +x side, closer to the ball


def test_positive_elevation_looks_down():
    up = _centroid(raster.render(_ball((0, 0, 0.2)), _camera(0, 0), size=SIZE, fov_deg=FOV))
    assert up[1] < SIZE / 2 - 5  # +z is up in the image
    towards_camera = _ball((0.0, -0.3, 0.0))  # between the origin and the azimuth-0 camera, at object height
    above = _centroid(raster.render(towards_camera, _camera(30, 0), size=SIZE, fov_deg=FOV))
    below = _centroid(raster.render(towards_camera, _camera(-30, 0), size=SIZE, fov_deg=FOV))
    assert above[1] > SIZE / 2 + 3 and below[1] < SIZE / 2 - 3  # looking down, nearer floor points sit lower


def test_sphere_silhouette_is_view_independent_but_a_wedge_is_not():
    sphere, wedge = shapes.make_mesh("sphere", "green", scale=0.5), shapes.make_mesh("wedge", "green", scale=0.5)
    front, back = (raster.silhouette(raster.render(sphere, _camera(15, az), size=SIZE)) for az in (0, 180))
    assert (front & back).sum() / (front | back).sum() > 0.98
    front, back = (raster.render(wedge, _camera(15, az), size=SIZE) for az in (0, 180))
    mask_front, mask_back = raster.silhouette(front), raster.silhouette(back)
    assert (mask_front & mask_back).sum() / (mask_front | mask_back).sum() < 0.85


def test_lighting_is_fixed_in_the_world():
    cube = shapes.make_mesh("cube", "white", scale=0.4)
    a, b = (raster.render(cube, _camera(20, az), size=SIZE) for az in (0, 180))
    assert raster.silhouette(a).sum() == pytest.approx(raster.silhouette(b).sum(), rel=0.05)
    assert abs(a.astype(int).mean() - b.astype(int).mean()) > 2  # same outline, different shading


@pytest.mark.parametrize("name", shapes.SHAPE_NAMES)
def test_meshes_are_closed_and_wound_outward(name):
    mesh = shapes.make_mesh(name, "red")
    edges = {}
    for a, b, c in mesh.faces:
        for edge in ((a, b), (b, c), (c, a)):
            edges[edge] = edges.get(edge, 0) + 1
    assert all(count == 1 and edges.get((b, a)) == 1 for (a, b), count in edges.items())
    assert shapes.signed_volume(mesh) > 0


def test_errors_name_the_problem():
    with pytest.raises(raster.CameraInsideObjectError, match="shrink the object"):
        raster.render(shapes.make_mesh("cube", "red", scale=3.0), _camera(0, 0), size=16)
    with pytest.raises(shapes.UnknownShapeError, match="dodecahedron"):
        shapes.make_mesh("dodecahedron", "red")
    with pytest.raises(shapes.UnknownShapeError, match="teal"):
        shapes.make_mesh("cube", "teal")
