"""mvrag_jax/recon/render.py against the plain numpy transcription of the CUDA rasterizer (reference_render.py),
fed the cameras the OFFICIAL infer.py builds (tests/reference/lgm_tiny/cases.npz)."""

import jax
import numpy as np
import pytest

from mvrag_jax.recon import cameras, render
from tests.conftest import REFERENCE
from tests.recon import reference_render

TOL = 2e-4  # float32 against float64; both add the same Gaussians in the same order


@pytest.fixture(scope="module")
def official():
    with np.load(REFERENCE / "lgm_tiny" / "cases.npz") as data:
        return dict(data)


def random_scene(n: int, seed: int, spread: float = 0.5, scale=(0.02, 0.15), opacity=(0.1, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-spread, spread, (n, 3))
    q = rng.standard_normal((n, 4))
    return np.concatenate([pos, rng.uniform(*opacity, (n, 1)), rng.uniform(*scale, (n, 3)),
                           q / np.linalg.norm(q, axis=1, keepdims=True), rng.uniform(0, 1, (n, 3))], 1).astype(np.float32)


def _reference(gaussians, official, k, settings):
    return reference_render.rasterize(gaussians, official["cam_view"][k], official["cam_view_proj"][k],
                                      settings.height, settings.width, settings.tan_half_fov, settings.background,
                                      settings.scale_modifier)


def _ours(gaussians, official, k, settings):
    elevation = official["elevations"][k // len(official["render_azimuths"])]
    azimuth = official["render_azimuths"][k % len(official["render_azimuths"])]
    view = cameras.world_to_camera(float(elevation), float(azimuth))
    image, alpha = jax.jit(render.render, static_argnums=2)(gaussians, view, settings)
    return np.asarray(image), np.asarray(alpha)


@pytest.mark.parametrize("k", [0, 1, 6])  # (elevation 0: azimuth 0, 20), (elevation -15: azimuth 90)
def test_random_scene_matches_reference(official, k):
    gaussians = random_scene(40, seed=k)
    settings = render.RenderSettings(height=40, width=40, chunk=8)  # 3 x 3 tiles (cropped), several chunks
    image, alpha = _ours(gaussians, official, k, settings)
    ref_image, ref_alpha = _reference(gaussians, official, k, settings)
    assert ref_alpha.max() > 0.5 and ref_alpha.min() < 0.05  # something drawn, background visible
    np.testing.assert_allclose(image, ref_image, atol=TOL)
    np.testing.assert_allclose(alpha, ref_alpha, atol=TOL)


def test_saturation_stops_compositing_as_cuda(official):
    """Opaque, overlapping Gaussians: transmittance reaches 1e-4, and what lies behind must not be drawn."""
    gaussians = random_scene(30, seed=7, spread=0.1, scale=(0.2, 0.4), opacity=(0.95, 1.0))
    settings = render.RenderSettings(height=24, width=24, chunk=4, background=(0.0, 0.5, 1.0))
    image, alpha = _ours(gaussians, official, 0, settings)
    ref_image, ref_alpha = _reference(gaussians, official, 0, settings)
    assert ref_alpha.max() > 1 - 1e-3
    np.testing.assert_allclose(image, ref_image, atol=TOL)
    np.testing.assert_allclose(alpha, ref_alpha, atol=TOL)


def test_culling_near_plane_and_scale_modifier(official):
    gaussians = random_scene(20, seed=3)
    behind = gaussians.copy()
    behind[:, 0:3] = [0.0, 0.0, 1.4]  # 0.1 in front of the camera at (0, 0, 1.5): inside the 0.2 near cull
    settings = render.RenderSettings(height=20, width=20, scale_modifier=0.5)
    image, _ = _ours(np.concatenate([gaussians, behind]), official, 0, settings)
    ref_image, _ = _reference(gaussians, official, 0, settings)
    np.testing.assert_allclose(image, ref_image, atol=TOL)
    empty, alpha = _ours(behind, official, 0, settings)
    np.testing.assert_array_equal(alpha, 0.0)
    np.testing.assert_array_equal(empty, 1.0)


def test_orientation_of_the_lgm_camera():
    """Azimuth 0, elevation 0: the camera sits on +z looking at the origin; world +x is image right, +y image up."""
    def blob(x, y, z):
        return np.array([[x, y, z, 1.0, 0.05, 0.05, 0.05, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)

    settings = render.RenderSettings(height=33, width=33)
    view = cameras.world_to_camera(0.0, 0.0)
    for (x, y), (row, col) in {(0.0, 0.0): (16, 16), (0.3, 0.0): (16, None), (0.0, 0.3): (None, 16)}.items():
        _, alpha = render.render(blob(x, y, 0.0), view, settings)
        r, c = np.unravel_index(np.argmax(np.asarray(alpha)), alpha.shape)
        assert (row is None or r == row) and (col is None or c == col)
        assert x == 0 or c > 16
        assert y == 0 or r < 16


def test_render_views_is_batched_and_equals_single_views():
    g = np.stack([random_scene(16, seed=1), random_scene(16, seed=2)])
    views = np.stack([cameras.orbit_views(-15.0, cameras.circle_azimuths(3)), cameras.orbit_views(0.0, [0, 90, 180])])
    settings = render.RenderSettings(height=16, width=16)
    images, alphas = render.render_views(g, views, settings, view_batch=2)
    assert images.shape == (2, 3, 16, 16, 3) and alphas.shape == (2, 3, 16, 16)
    for b in range(2):
        for v in range(3):
            image, alpha = render.render(g[b], views[b, v], settings)
            np.testing.assert_allclose(images[b, v], image, atol=1e-6)
            np.testing.assert_allclose(alphas[b, v], alpha, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[b, N, 14\]"):
        render.render_views(g[0], views, settings)
