"""A plain numpy Gaussian rasterizer for tests: the CUDA rasterizer (graphdeco diff-gaussian-rasterization, as LGM
calls it: SH degree 0 with precomputed colours) transcribed loop by loop, scalar by scalar, with its matrices in
glm's column-major convention and its inputs exactly as LGM passes them (`cam_view` = world-to-camera transposed,
`cam_view_proj` = cam_view @ proj_matrix). Slow and obvious on purpose: mvrag_jax/recon/render.py is checked
against it on small scenes.
"""

import math

import numpy as np

BLOCK = 16


def _glm_mat3(*values):
    """glm::mat3(a, b, c, d, ...) fills COLUMNS: returns the numpy matrix M[row, col]."""
    return np.array(values, np.float64).reshape(3, 3).T


def _cov3d(scale, mod, rot):
    r, x, y, z = rot / np.linalg.norm(rot)
    s = np.diag(mod * scale)
    rmat = _glm_mat3(1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
                     2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
                     2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y))
    m = s @ rmat
    return m.T @ m


def _cov2d(mean, fx, fy, tan_fovx, tan_fovy, sigma, viewmatrix):
    vm = viewmatrix.reshape(-1)  # column-major float[16], as the CUDA kernel reads it
    t = np.array([vm[0] * mean[0] + vm[4] * mean[1] + vm[8] * mean[2] + vm[12],
                  vm[1] * mean[0] + vm[5] * mean[1] + vm[9] * mean[2] + vm[13],
                  vm[2] * mean[0] + vm[6] * mean[1] + vm[10] * mean[2] + vm[14]])
    limx, limy = 1.3 * tan_fovx, 1.3 * tan_fovy
    t[0] = min(limx, max(-limx, t[0] / t[2])) * t[2]
    t[1] = min(limy, max(-limy, t[1] / t[2])) * t[2]
    jac = _glm_mat3(fx / t[2], 0.0, -(fx * t[0]) / (t[2] * t[2]),
                    0.0, fy / t[2], -(fy * t[1]) / (t[2] * t[2]), 0, 0, 0)
    w = _glm_mat3(vm[0], vm[4], vm[8], vm[1], vm[5], vm[9], vm[2], vm[6], vm[10])
    tm = w @ jac
    cov = tm.T @ sigma.T @ tm
    # glm cov[col][row]: cov[0][0], cov[0][1], cov[1][1]
    return cov[0, 0] + 0.3, cov[1, 0], cov[1, 1] + 0.3


def rasterize(gaussians, cam_view, cam_view_proj, height, width, tan_half_fov, background, scale_modifier=1.0):
    """gaussians [N, 14] (LGM's activated rows), cam_view / cam_view_proj [4, 4] as LGM passes them ->
    (image [H, W, 3] clamped to [0, 1], alpha [H, W])."""
    g = np.asarray(gaussians, np.float64)
    fx, fy = width / (2 * tan_half_fov), height / (2 * tan_half_fov)
    grid_x, grid_y = (width + BLOCK - 1) // BLOCK, (height + BLOCK - 1) // BLOCK
    vm, pm = np.asarray(cam_view, np.float64).reshape(-1), np.asarray(cam_view_proj, np.float64).reshape(-1)
    drawn = []  # (depth, index, xy, conic, opacity, colour, rect)
    for i, row in enumerate(g):
        p = row[0:3]
        z = vm[2] * p[0] + vm[6] * p[1] + vm[10] * p[2] + vm[14]
        if z <= 0.2:
            continue
        hom = [pm[k] * p[0] + pm[4 + k] * p[1] + pm[8 + k] * p[2] + pm[12 + k] for k in range(4)]
        pw = 1.0 / (hom[3] + 1e-7)
        a, b, c = _cov2d(p, fx, fy, tan_half_fov, tan_half_fov, _cov3d(row[4:7], scale_modifier, row[7:11]),
                         np.asarray(cam_view, np.float64))
        det = a * c - b * b
        if det == 0:
            continue
        conic = (c / det, -b / det, a / det)
        mid = 0.5 * (a + c)
        l1 = mid + math.sqrt(max(0.1, mid * mid - det))
        l2 = mid - math.sqrt(max(0.1, mid * mid - det))
        radius = math.ceil(3.0 * math.sqrt(max(l1, l2)))
        xy = (((hom[0] * pw + 1) * width - 1) * 0.5, ((hom[1] * pw + 1) * height - 1) * 0.5)
        rect = (min(grid_x, max(0, int((xy[0] - radius) / BLOCK))), min(grid_y, max(0, int((xy[1] - radius) / BLOCK))),
                min(grid_x, max(0, int((xy[0] + radius + BLOCK - 1) / BLOCK))),
                min(grid_y, max(0, int((xy[1] + radius + BLOCK - 1) / BLOCK))))
        if (rect[2] - rect[0]) * (rect[3] - rect[1]) == 0:
            continue
        drawn.append((z, i, xy, conic, row[3], row[11:14], rect))
    drawn.sort(key=lambda d: (d[0], d[1]))
    image, alpha = np.zeros((height, width, 3)), np.zeros((height, width))
    for py in range(height):
        for px in range(width):
            tx, ty = px // BLOCK, py // BLOCK
            trans, colour = 1.0, np.zeros(3)
            for _, _, xy, con, opacity, rgb, rect in drawn:
                if not (rect[0] <= tx < rect[2] and rect[1] <= ty < rect[3]):
                    continue
                dx, dy = xy[0] - px, xy[1] - py
                power = -0.5 * (con[0] * dx * dx + con[2] * dy * dy) - con[1] * dx * dy
                if power > 0:
                    continue
                a = min(0.99, opacity * math.exp(power))
                if a < 1.0 / 255.0:
                    continue
                test_t = trans * (1 - a)
                if test_t < 0.0001:
                    break
                colour += rgb * a * trans
                trans = test_t
            image[py, px] = colour + trans * np.asarray(background)
            alpha[py, px] = 1 - trans
    return np.clip(image, 0, 1), alpha
