"""Array plumbing shared by the checks: layout at the NCHW (cases) / NHWC (ours) boundary, retrieved images of a
case, and the comparisons that the float tolerance cannot express (exact integers, the uint8 image rule)."""

import numpy as np

UINT8_MAX_DIFF = 1              # a pixel may differ by one level ...
UINT8_MAX_OFF_FRACTION = 0.005  # ... on at most this fraction of pixels (tests/reference/README.md)


def nhwc(x) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 2, 3, 1))  # [b, c, h, w] -> [b, h, w, c]


def nchw(x) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 3, 1, 2))  # [b, h, w, c] -> [b, c, h, w]


def retrieved_images(case: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The raw retrieved images `ret_image_0, ret_image_1, ...` of a case, in numeric order ([h, w, 3] uint8)."""
    names = sorted((k for k in case if k.startswith("ret_image_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [case[name] for name in names]


def exact(ours, ref) -> tuple[np.ndarray, np.ndarray]:
    """(equality mask, ones) for arrays that must match exactly; a shape mismatch passes `ours` on to fail there."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        return ours, ref
    return (ours == ref).astype(np.float32), np.ones(ref.shape, np.float32)


def uint8_violations(ours, ref) -> np.ndarray:
    """[pixels off by more than 1, differing pixels beyond the 0.5 % allowance] for uint8 images [..., h, w, c];
    a pixel differs when any of its channels does. Both counts are 0 exactly when the reference uint8 rule holds."""
    if np.shape(ours) != np.shape(ref):
        raise ValueError(f"uint8 images have shapes {np.shape(ours)} (ours) and {np.shape(ref)} (reference)")
    diff = np.abs(np.asarray(ours, np.int32) - np.asarray(ref, np.int32)).max(axis=-1)  # [..., h, w]
    allowance = int(UINT8_MAX_OFF_FRACTION * diff.size)
    too_far = int(np.sum(diff > UINT8_MAX_DIFF))
    off = int(np.sum(diff > 0))
    return np.array([too_far, max(0, off - allowance)], np.float32)
