"""Every Python snippet in README.md runs (so the documentation cannot drift from the code)."""

import os
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_python_snippets_run(tiny_ckpt, monkeypatch):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets, "README.md has no python snippet"
    monkeypatch.chdir(README.parent)
    for snippet in snippets:
        namespace: dict = {}
        exec(compile(snippet.replace('"out/tiny_ckpt"', repr(os.fspath(tiny_ckpt))), "README.md", "exec"), namespace)
        if "tokens" in namespace:
            config = namespace["configs"]["resampler"]
            assert np.asarray(namespace["tokens"]).shape == (2, config.num_queries, config.output_dim)
            assert np.asarray(namespace["context"]).shape[:2] == (2, 77)
