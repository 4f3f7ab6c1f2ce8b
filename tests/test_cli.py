import json

import pytest

from mvrag_jax.cli import COMMANDS, main
from tests.conftest import CASES, TINY_RELEASE


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["mvrag", "--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_explains_flags(capsys, name):
    assert main(["mvrag", name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"mvrag {name}" in out and "--compile_cache_dir" in out


def test_unknown_subcommand_and_missing_flags(capsys):
    assert main(["mvrag", "frobnicate"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    assert main(["mvrag", "convert", "--out", "x"]) == 2
    assert "--release" in capsys.readouterr().err


def test_convert_bad_release_is_a_one_line_error(capsys, tmp_path):
    assert main(["mvrag", "convert", "--release", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--compile_cache_dir", "none"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_verify_reference_json_lines(capsys):
    rc = main(["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(CASES), "--json",
               "--only", "camera", "--compile_cache_dir", "none"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [(r["case"], r["status"]) for r in lines] == [("camera", "pass")]
    assert lines[0]["tol"] == {"atol": 1e-4, "rtol": 1e-4} and lines[0]["max_abs_err"] == 0.0


def test_verify_reference_unknown_case_is_an_error(capsys):
    assert main(["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(CASES),
                 "--only", "nope", "--compile_cache_dir", "none"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_convert_then_export_from_the_cli(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "release"
    assert main(["mvrag", "convert", "--release", str(TINY_RELEASE), "--out", str(ckpt),
                 "--compile_cache_dir", "none"]) == 0
    assert main(["mvrag", "export", "--ckpt", str(ckpt), "--out", str(out), "--compile_cache_dir", "none"]) == 0
    assert (out / "model_index.json").is_file()
    assert main(["mvrag", "export", "--ckpt", str(ckpt), "--out", str(out), "--compile_cache_dir", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_verify_reference_text_mode_ends_with_counts(capsys):
    rc = main(["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(CASES),
               "--only", "camera", "--compile_cache_dir", "none"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].split() == ["pass", "camera", "max_abs_err=0"]
    assert lines[-1].startswith("1 passed, 0 failed, 0 skipped in ")


def test_require_all_fails_when_a_case_is_skipped(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "mystery.npz").write_bytes((CASES / "camera.npz").read_bytes())  # a case file with no check
    args = ["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(cases),
            "--compile_cache_dir", "none"]
    assert main(args) == 0
    assert main(args + ["--require_all"]) == 1
    assert "skipped" in capsys.readouterr().out
