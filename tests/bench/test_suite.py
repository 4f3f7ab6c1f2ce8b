"""mvrag_jax/bench/suite.py: `mvrag bench all` writes machine + figures; `mvrag bench compare` prints ratios."""

import json

import pytest

from configs import tiny
from mvrag_jax.bench import suite as bench_suite
from mvrag_jax.cli import main

NO_CACHE = ["--compile_cache_dir", "none"]


def test_run_all_records_machine_and_figures(tmp_path):
    path, failed = bench_suite.run_all(tiny.get_config(), tmp_path / "b.json", steps=1, only=["data_mixed"],
                                       data_dir=str(tmp_path / "data"))
    result = json.loads(path.read_text())
    assert failed == [] and set(result["benchmarks"]) == {"data_mixed"}
    assert result["benchmarks"]["data_mixed"]["examples_per_s"] > 0
    m = result["machine"]
    assert m["backend"] == "cpu" and m["versions"]["jax"] and len(m["git_commit"] or "x" * 40) == 40
    with pytest.raises(ValueError, match="unknown benchmarks \\['nope'\\]"):
        bench_suite.run_all(tiny.get_config(), tmp_path / "c.json", only=["nope"])
    assert "unet" in bench_suite.benchmarks(tiny.get_config(), 1)


def _write(path, step_s, batch_size):
    path.write_text(json.dumps({"machine": {"backend": "cpu", "device_kind": "cpu", "git_commit": "abc"},
                                "benchmarks": {"unet": {"batch_size": batch_size, "forward": {"step_s": step_s},
                                                        "error_free": True}}}))
    return path


def test_compare_prints_ratios_and_differing_settings(tmp_path, capsys):
    a, b = _write(tmp_path / "a.json", 2.0, 1), _write(tmp_path / "b.json", 0.5, 4)
    assert main(["mvrag", "bench", "compare", str(a), str(b)] + NO_CACHE) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("unet.forward.step_s"))
    assert row.split()[1:] == ["2", "0.5", "0.250"]
    assert "setting differs: unet.batch_size A=1 B=4" in out
    assert main(["mvrag", "bench", "compare", str(a)] + NO_CACHE) == 2
    assert "usage: mvrag bench compare" in capsys.readouterr().err
    assert main(["mvrag", "bench", "compare", str(a), str(tmp_path / "x.json")] + NO_CACHE) == 2
