"""Models of a release, converted in memory on first use (the same conversion `mvrag convert` writes to disk)."""

import dataclasses
import pathlib
from typing import Any

from mvrag_jax.convert.components import COMPONENTS_BY_NAME, convert_component
from mvrag_jax.pipeline.programs import Programs
from mvrag_jax.inputs.release import Release


class NotImplementedYet(Exception):
    """The component a reference case needs is not implemented yet (reported as `skipped`, never `pass`)."""


@dataclasses.dataclass
class ReleaseModels:
    release: Release
    _cache: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    # compiled pipeline stages, shared by every check (and test) that runs a pipeline on these models
    programs: Programs = dataclasses.field(default_factory=Programs)

    @classmethod
    def open(cls, release_dir: str | pathlib.Path) -> "ReleaseModels":
        return cls(Release.open(release_dir))

    def get(self, name: str) -> tuple[Any, Any]:
        """(config, params) of component `name`."""
        if name not in COMPONENTS_BY_NAME:
            raise NotImplementedYet(f"component {name} is not implemented yet")
        if name not in self._cache:
            self._cache[name] = convert_component(self.release, COMPONENTS_BY_NAME[name])
        return self._cache[name]
