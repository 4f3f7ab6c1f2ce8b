"""Dev tool (not part of the test suite, not run in CI): official MV-RAG reference cases for ANY release configuration.

It (1) writes a tiny random-weight release of a configuration from tools/official_cases/case_configs.py in the
official on-disk layout (official modules + diffusers/transformers save_pretrained; random-init rule in
tiny_release.py), (2) runs the OFFICIAL PyTorch code on it (exported from the mirror into a temp folder, with the
stand-ins of tests/reference/cases/README.md, see official_env.py) and (3) writes the same case files as
tests/reference/cases (same array names and layouts) plus a README.md with the configuration.

Needs the torch venv (torch 2.13 CPU, diffusers 0.42.1, transformers 5.24.0) and torchvision 0.28 installed aside
(the torch venv is shared; the tool neutralises its CUDA op registrations at import, files stay untouched):

    /work/torchenv/bin/pip install --no-deps --target ~/.cache/mvrag_official_site torchvision==0.28.0

Generate config B (release + cases) into the repository:

    /work/torchenv/bin/python tools/official_cases/make_cases.py --config B --out tests/reference_configs/b

Validate the tool: recompute config A's cases from tests/reference (its release, its case inputs) and print the max
|difference| of every array against the stored ones (should be ~0):

    /work/torchenv/bin/python tools/official_cases/make_cases.py --config A \\
        --release tests/reference/tiny_release --inputs_from tests/reference/cases \\
        --out /tmp/official_a --compare tests/reference/cases

Then check our implementation on the new set (or run tests/verify/test_other_reference_configs.py):

    PYTHONPATH=$PWD .venv/bin/python -m mvrag_jax verify-reference \\
        --release tests/reference_configs/b/release --cases tests/reference_configs/b/cases
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import case_configs  # noqa: E402
import official_env  # noqa: E402


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.str if dtype.kind == "U" else dtype.name  # float32, int64, uint8, <U26 (as in config A's README)


def write_readme(cases_dir: pathlib.Path, name: str, cfg: dict, cases: dict, commit: str):
    lines = [f"# MV-RAG reference cases (config {name})", "",
             f"Computed with the OFFICIAL MV-RAG PyTorch code (github yosefdayani/MV-RAG @ {commit}) on the "
             "random-weight release in ../release, float32 on CPU, by tools/official_cases/make_cases.py "
             f"(`--config {name}`). Array names, layouts and meanings are those of tests/reference/cases/README.md "
             "(config A); the semantics, stand-ins and patches listed there apply unchanged. 'weights_dtype' gives the "
             "on-disk dtype of components not stored in float32 (the official loader upcasts them to float32).", "",
             "## Config", "", "```json", json.dumps(cfg, indent=1), "```", "",
             f"Scheduler config: `{json.dumps(case_configs.SCHEDULER)}`", "", "## Cases", ""]
    for case, arrays in cases.items():
        lines += [f"### {case}.npz", "", "| array | shape | dtype |", "|---|---|---|"]
        lines += [f"| {k} | {tuple(np.shape(v))} | {_dtype_name(np.asarray(v).dtype)} |" for k, v in arrays.items()]
        lines.append("")
    (cases_dir / "README.md").write_text("\n".join(lines))


def save_cases(cases_dir: pathlib.Path, cases: dict):
    cases_dir.mkdir(parents=True, exist_ok=True)
    for case, arrays in cases.items():
        tmp = cases_dir / f".{case}.tmp.npz"
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        tmp.replace(cases_dir / f"{case}.npz")


def compare(cases: dict, reference_dir: pathlib.Path) -> float:
    """Print max |ours - stored| per array (exact match required for strings/ints); returns the overall max."""
    worst = 0.0
    for case, arrays in cases.items():
        with np.load(reference_dir / f"{case}.npz") as data:
            stored = {k: data[k] for k in data.files}
        missing = sorted(set(stored) ^ set(arrays))
        print(f"{case}: " + (f"array names differ: {missing}" if missing else "same array names"))
        for key in sorted(set(stored) & set(arrays)):
            a, b = np.asarray(arrays[key]), stored[key]
            if a.shape != b.shape:
                print(f"  {key}: SHAPE {a.shape} vs {b.shape}")
                worst = float("inf")
            elif a.dtype.kind in "USO":
                print(f"  {key}: {'equal' if np.array_equal(a, b) else 'DIFFERENT'}")
            else:
                err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))
                worst = max(worst, err)
                print(f"  {key}: max|d| = {err:.3g}")
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"configuration: {', '.join(case_configs.CONFIGS)}")
    parser.add_argument("--out", required=True, type=pathlib.Path,
                        help="output folder: gets release/ (unless --release) and cases/")
    parser.add_argument("--release", type=pathlib.Path,
                        help="use this existing release instead of writing a new one (validation)")
    parser.add_argument("--inputs_from", type=pathlib.Path,
                        help="take the case inputs from this case folder instead of drawing them (validation)")
    parser.add_argument("--compare", type=pathlib.Path, help="print max differences against this case folder")
    parser.add_argument("--mirror", type=pathlib.Path, default=official_env.DEFAULT_MIRROR,
                        help="bare git clone of github.com/yosefdayani/MV-RAG")
    parser.add_argument("--extra_site", type=pathlib.Path,
                        default=pathlib.Path("~/.cache/mvrag_official_site").expanduser(),
                        help="folder with torchvision installed aside (pip install --target)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)

    cfg = case_configs.get_config(args.config)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"make_cases: error: {out} exists and is not empty; pass --overwrite to replace it")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mvrag_official_") as work:
        import os
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        commit = official_env.prepare(pathlib.Path(work), args.mirror, args.extra_site)
        import official_cases
        import tiny_release
        if out.exists():
            shutil.rmtree(out)
        release = args.release.resolve() if args.release else out / "release"
        if not args.release:
            tiny_release.write_release(release, cfg, REPO / "tests" / "reference" / "tiny_release" / "tokenizer")
            print(f"release written to {release}")
        inputs = (official_cases.load_inputs(args.inputs_from.resolve()) if args.inputs_from
                  else official_cases.make_inputs(cfg))
        pipe = official_cases.load_pipeline(release)
        cases = official_cases.compute_cases(pipe, cfg, inputs)
    save_cases(out / "cases", cases)
    write_readme(out / "cases", args.config, cfg, cases, commit)
    print(f"{len(cases)} cases written to {out / 'cases'} in {time.time() - start:.0f}s")
    if args.compare:
        print(f"overall max |d| = {compare(cases, args.compare.resolve()):.3g}")


if __name__ == "__main__":
    main()
