"""Procedural triangle meshes of simple primitives, in Blender world axes (z up), for the synthetic dataset.

Every mesh is closed and wound counter-clockwise seen from outside, so face normals point outward and the renderer
can cull back faces and light from fixed world directions. `wedge` and `pyramid` are not rotationally symmetric
about z, which lets tests and models tell azimuths apart.
"""

import dataclasses

import numpy as np

from mvrag_jax.errors import MvragError

SHAPE_NAMES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "wedge")
# Albedo in [0, 1]; names are what captions say.
COLOURS = (
    ("red", (0.85, 0.12, 0.10)),
    ("green", (0.15, 0.70, 0.20)),
    ("blue", (0.12, 0.25, 0.85)),
    ("yellow", (0.92, 0.85, 0.15)),
    ("orange", (0.95, 0.50, 0.08)),
    ("purple", (0.55, 0.20, 0.75)),
    ("white", (0.92, 0.92, 0.92)),
    ("cyan", (0.10, 0.80, 0.85)),
)


@dataclasses.dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # [n, 3] float64, world units
    faces: np.ndarray     # [t, 3] int32, counter-clockwise seen from outside
    colour: tuple[float, float, float]


class UnknownShapeError(MvragError, ValueError):
    pass


def colour_rgb(name: str) -> tuple[float, float, float]:
    for colour_name, rgb in COLOURS:
        if colour_name == name:
            return rgb
    raise UnknownShapeError(f"colour {name!r} is not one of {[c for c, _ in COLOURS]}; fix the config's colours")


def _orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip faces whose normal points towards the centroid; correct for convex, star-shaped meshes only."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    outward = np.sum(normals * ((v0 + v1 + v2) / 3 - vertices.mean(axis=0)), axis=-1) >= 0
    return np.where(outward[:, None], faces, faces[:, ::-1]).astype(np.int32)


def _convex(vertices: np.ndarray, faces) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, np.float64)
    return vertices, _orient_outward(vertices, np.asarray(faces, np.int32))


def _cube():
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64) * 0.5
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return _convex(corners, [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def _ring(n: int, radius: float, z: float) -> np.ndarray:
    angle = np.arange(n) * 2 * np.pi / n
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), np.full(n, z)], axis=1)


def _sphere(n_lon: int = 24, n_lat: int = 12):
    rings = [_ring(n_lon, np.sin(np.pi * i / n_lat) * 0.5, np.cos(np.pi * i / n_lat) * 0.5) for i in range(1, n_lat)]
    vertices = np.concatenate([[[0, 0, 0.5]], *rings, [[0, 0, -0.5]]])
    bottom, faces = len(vertices) - 1, []
    for j in range(n_lon):
        k = (j + 1) % n_lon
        faces.append((0, 1 + j, 1 + k))
        faces.append((bottom, 1 + (n_lat - 2) * n_lon + j, 1 + (n_lat - 2) * n_lon + k))
        for i in range(n_lat - 2):
            a, b = 1 + i * n_lon, 1 + (i + 1) * n_lon
            faces += [(a + j, b + j, b + k), (a + j, b + k, a + k)]
    return _convex(vertices, faces)


def _prism(n: int, top_radius: float):
    """Cylinder (top_radius = bottom radius) or cone (top_radius = 0: one apex vertex) of height 1 about z."""
    bottom = _ring(n, 0.5, -0.5)
    if top_radius > 0:
        vertices = np.concatenate([bottom, _ring(n, top_radius, 0.5), [[0, 0, -0.5]], [[0, 0, 0.5]]])
        bottom_centre, top_centre = 2 * n, 2 * n + 1
        faces = [f for j in range(n) for k in [(j + 1) % n]
                 for f in ((bottom_centre, j, k), (j, k, n + k), (j, n + k, n + j), (top_centre, n + j, n + k))]
    else:
        vertices = np.concatenate([bottom, [[0, 0, 0.5]], [[0, 0, -0.5]]])
        faces = [f for j in range(n) for f in ((n + 1, j, (j + 1) % n), (j, (j + 1) % n, n))]
    return _convex(vertices, faces)


def _pyramid():
    base = np.array([[-0.5, -0.5, -0.4], [0.5, -0.5, -0.4], [0.5, 0.5, -0.4], [-0.5, 0.5, -0.4]])
    apex = [[0.15, 0.15, 0.5]]  # off-centre apex: no 90-degree symmetry
    return _convex(np.concatenate([base, apex]), [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])


def _wedge():
    """A ramp: full height at +x, zero height at -x, so every azimuth sees a different outline."""
    vertices = [[-0.5, -0.35, -0.3], [0.5, -0.35, -0.3], [0.5, 0.35, -0.3], [-0.5, 0.35, -0.3],
                [0.5, -0.35, 0.4], [0.5, 0.35, 0.4]]
    faces = [(0, 1, 2), (0, 2, 3), (1, 2, 5), (1, 5, 4), (0, 1, 4), (3, 2, 5), (0, 4, 5), (0, 5, 3)]
    return _convex(vertices, faces)


def _torus(n_major: int = 24, n_minor: int = 10, major: float = 0.33, minor: float = 0.17):
    """A ring standing upright in the xz plane (hole along y): face-on at azimuths 0/180, edge-on at 90/270."""
    u = np.arange(n_major) * 2 * np.pi / n_major
    v = np.arange(n_minor) * 2 * np.pi / n_minor
    uu, vv = np.meshgrid(u, v, indexing="ij")  # [n_major, n_minor]
    ring = major + minor * np.cos(vv)
    vertices = np.stack([ring * np.cos(uu), -minor * np.sin(vv), ring * np.sin(uu)], -1).reshape(-1, 3)
    faces = []
    for i in range(n_major):
        for j in range(n_minor):
            a, b = i * n_minor + j, ((i + 1) % n_major) * n_minor + j
            c, d = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor, i * n_minor + (j + 1) % n_minor
            faces += [(a, b, c), (a, c, d)]  # (u, v) is right-handed with the outward normal: CCW from outside
    return vertices, np.asarray(faces, np.int32)


def make_mesh(shape: str, colour: str, *, scale: float = 1.0, yaw_deg: float = 0.0,
              offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Mesh:
    """A primitive of bounding radius ~0.5 * scale, turned by `yaw_deg` about z and moved by `offset`."""
    builders = {"cube": _cube, "sphere": _sphere, "cylinder": lambda: _prism(24, 0.5),
                "cone": lambda: _prism(24, 0.0), "torus": _torus, "pyramid": _pyramid, "wedge": _wedge}
    if shape not in builders:
        raise UnknownShapeError(f"shape {shape!r} is not one of {SHAPE_NAMES}; fix the config's shapes")
    vertices, faces = builders[shape]()
    yaw = np.deg2rad(yaw_deg)
    rotation = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    vertices = vertices @ rotation.T * scale + np.asarray(offset, np.float64)
    return Mesh(vertices=vertices, faces=faces, colour=colour_rgb(colour))


def signed_volume(mesh: Mesh) -> float:
    """Positive iff the faces are wound outward (divergence theorem); tests use it to check every shape."""
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    return float(np.sum(np.einsum("ij,ij->i", v0, np.cross(v1, v2))) / 6)
