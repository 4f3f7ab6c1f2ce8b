"""Our key mapping covers the FULL-SIZE release, key for key and shape for shape, both ways, without allocating it.

tests/reference/manifests/<component>.json lists every tensor of the published release component. For each row of
COMPONENTS that has a manifest, the full-size config is built the way production builds it, the model's params are
shaped with jax.eval_shape, and the manifest is pushed through the real conversion (`state_dict_to_params`) as
zero-stride float32 views, so the check runs on the converter itself in a few MB of memory.
"""

import json
import pathlib
from typing import Any, Callable

import numpy as np
import pytest

from configs import mvrag_sd21
from mvrag_jax.convert.components import COMPONENTS, COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import flatten, flax_path_to_torch_key, flax_to_torch_array, state_dict_to_params
from tests.conftest import MANIFESTS


# Hook for components whose full-size config cannot come from configs/mvrag_sd21.py (e.g. an encoder sized by its hub
# config): map the component name to a zero-argument factory returning its full-size config. Every other component
# is built with `config_class.from_config(mvrag_sd21.get_config())`, the production path.
FULL_SIZE_CONFIG_FACTORIES: dict[str, Callable[[], Any]] = {}


def full_size_config(name: str) -> Any:
    if name in FULL_SIZE_CONFIG_FACTORIES:
        return FULL_SIZE_CONFIG_FACTORIES[name]()
    config_class = COMPONENTS_BY_NAME[name].config_class
    try:
        return config_class.from_config(mvrag_sd21.get_config())
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        pytest.fail(f"cannot build the full-size {name} config from configs/mvrag_sd21.py ({e!r}); add a factory "
                    f"for {name!r} to FULL_SIZE_CONFIG_FACTORIES in {pathlib.Path(__file__).name}")


def manifest_path(name: str) -> pathlib.Path:
    return MANIFESTS / f"{name}.json"  # component name == manifest name (unet, resampler, clip_text, ..., dinov2)


WITH_MANIFEST = [c.name for c in COMPONENTS if manifest_path(c.name).is_file()]


def _manifest(name: str) -> dict:
    return json.loads(manifest_path(name).read_text())


def _zero_stride(shape) -> np.ndarray:
    """A float32 array of `shape` that owns one element (a broadcast view): full-size tensors without the memory."""
    return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


def _manifest_state_dict(name: str) -> dict[str, np.ndarray]:
    """The manifest as the state dict our converter sees (after the component's own key normalisation)."""
    entries = _manifest(name)["keys"]
    assert {entry["dtype"] for entry in entries} == {"float32"}
    return COMPONENTS_BY_NAME[name].normalize_keys({entry["key"]: _zero_stride(entry["shape"]) for entry in entries})


@pytest.fixture(scope="module", params=WITH_MANIFEST)
def full_size(request):
    """(name, full-size abstract params, manifest state dict); eval_shape only, shared by the tests below."""
    name = request.param
    component = COMPONENTS_BY_NAME[name]
    return name, abstract_params(component, full_size_config(name)), _manifest_state_dict(name)


def test_components_with_manifests_include_unet_and_resampler():
    assert {"unet", "resampler"} <= set(WITH_MANIFEST)


def test_every_manifest_key_converts_onto_our_params(full_size):
    """Manifest -> ours: the real converter accepts the full-size key set (raising CheckpointKeyError otherwise)."""
    name, abstract, state_dict = full_size
    params = state_dict_to_params(state_dict, abstract, component=name, hint=COMPONENTS_BY_NAME[name].hint)
    converted = {path: value.shape for path, value in flatten(params).items()}
    assert converted == {path: leaf.shape for path, leaf in flatten(abstract).items()}
    assert all(value.base is not None or value.size <= 1 for value in flatten(params).values())  # nothing copied


def test_every_param_of_ours_is_a_manifest_key_with_its_shape(full_size):
    """Ours -> manifest: each leaf of eval_shape(init_params(full config)) names a release key of the same shape."""
    name, abstract, state_dict = full_size
    ours = {}
    for path, leaf in flatten(abstract).items():
        ours[flax_path_to_torch_key(path)] = flax_to_torch_array(path[-1], _zero_stride(leaf.shape)).shape
    release = {key: array.shape for key, array in state_dict.items()}
    assert sorted(set(ours) - set(release)) == [], f"{name}: params the release does not have"
    assert sorted(set(release) - set(ours)) == [], f"{name}: release tensors our model does not have"
    assert {k: s for k, s in ours.items() if release[k] != s} == {}, f"{name}: shapes differ (ours vs release)"


def test_full_size_parameter_total_matches_manifest(full_size):
    name, abstract, _ = full_size
    total = sum(int(np.prod(leaf.shape)) for leaf in flatten(abstract).values())
    assert total == _manifest(name)["total_parameters"]
