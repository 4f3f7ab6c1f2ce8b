"""Every Python snippet in README.md runs (so the documentation cannot drift from the code)."""

import os
import pathlib
import re
import shlex

import numpy as np

from tests.conftest import CASES, TINY_RELEASE

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


# Placeholders in README command lines -> tiny stand-ins (names of temporary paths are relative to tmp_path).
_SUBSTITUTIONS = {
    "/path/to/mv-rag-release": str(TINY_RELEASE), "/path/to/release": str(TINY_RELEASE),
    "/path/to/cases": str(CASES), "ckpt/mvrag": "{tmp}/ckpt", "exported/": "{tmp}/exported",
    "/tmp/mvrag_data": "{tmp}/data", "/tmp/preview.png": "{tmp}/preview.png",
    "tests/reference/tiny_release": str(TINY_RELEASE), "/tmp/mvrag_tiny_init": "{tmp}/tiny_init",
}
# Commands cheap enough on the tiny stand-ins to run for real, in README order; the rest are parsed only (a full
# verify-reference, a full-size UNet bench, a build from real-data folders that do not exist here; the generate
# smoke run is run by tests/pipeline/test_generate_e2e.py).
_RUN = ("convert --release", "export --ckpt ckpt/mvrag", "data build --config configs/data.py:size=tiny", "data preview",
        "data bench")


def readme_command_lines() -> list[str]:
    """Every `mvrag ...` command in README's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if re.match(r"(\S*/)?mvrag ", line):
                lines.append(line.split("mvrag ", 1)[1])
    return lines


def test_every_readme_command_line_parses_and_the_cheap_ones_run(tmp_path, monkeypatch):
    from mvrag_jax.cli import COMMANDS, main, parse
    commands = readme_command_lines()
    assert {c.split()[0] for c in commands} >= {"convert", "export", "verify-reference", "bench", "data",
                                                      "generate"}
    monkeypatch.chdir(tmp_path)  # the documented lines must work from any directory
    ran = []
    for documented in commands:
        documented = " ".join(documented.split())
        command = documented
        pattern = "|".join(map(re.escape, _SUBSTITUTIONS))  # one pass: a substitute is never substituted again
        command = re.sub(pattern, lambda m: _SUBSTITUTIONS[m[0]].format(tmp=tmp_path), command)
        args = shlex.split(command)
        fv, positional = parse(COMMANDS[args[0]], args[1:] + ["--compile_cache_dir=none"])
        assert len(positional) <= 2, positional
        if any(documented.startswith(prefix) for prefix in _RUN):
            assert main(["mvrag", *args, "--compile_cache_dir=none"]) == 0, command
            ran.append(args[0] if args[0] != "data" else f"data {args[1]}")
    assert ran == ["convert", "export", "data build", "data preview", "data bench", "convert"]  # the last: training's init
    assert (tmp_path / "exported" / "model_index.json").is_file() and (tmp_path / "preview.png").is_file()


def test_every_flag_named_in_readme_exists():
    from mvrag_jax.cli import COMMANDS, command_help
    helps = "\n".join(command_help(c) for c in COMMANDS.values())
    text = re.sub(r'--beam_options="[^"]*"', "--beam_options", README.read_text())  # Beam's own flags, passed on
    named = set(re.findall(r"(?<![\w-])--([a-z][\w-]*)", text)) - {"help"}
    launcher = "\n".join((README.parent / script).read_text()  # the README documents the scripts' flags too
                          for script in ("launch/tpu_train.sh", "tools/accelerator_check.sh"))
    tools = "\n".join(p.read_text() for p in (README.parent / "tools").glob("*.py"))  # and the tools' argparse flags
    missing = {f for f in named if not re.search(rf"--(\[no\])?{re.escape(f.replace('_', '-'))}\b", helps)
               and not re.search(rf"--{re.escape(f)}\b", launcher)
               and not re.search(rf"add_argument\(\"--{re.escape(f)}\"", tools)}
    assert not missing, f"README names flags no command defines: {sorted(missing)}"
