import json

import pytest

from mvrag_jax.cli import flags as cli_flags
from mvrag_jax.cli import COMMANDS, main, parse
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
    assert f"mvrag {name}" in out and "--compile-cache-dir" in out and "--compile_cache_dir" not in out


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


def test_require_all_takes_the_dashed_spelling_too(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "mystery.npz").write_bytes((CASES / "camera.npz").read_bytes())
    args = ["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(cases)]
    assert main(args + ["--require-all", "--compile-cache-dir=none"]) == 1
    assert main(args + ["--require-all", "--no-require-all", "--compile-cache-dir", "none"]) == 0
    assert main(args + ["--norequire-all", "--compile_cache_dir=none"]) == 0


def test_normalise_argv_touches_defined_names_only():
    fv, _ = parse(COMMANDS["verify-reference"], ["--release", "r", "--cases", "c"])
    args = ["--require-all", "--only", "--json-x", "--no-json", "--compile-cache-dir=a-b", "--config.a_b-c", "-x-y",
            "--", "--require-all"]
    assert cli_flags.normalise_argv(args, fv) == [
        "--require_all", "--only", "--json-x", "--nojson", "--compile_cache_dir=a-b", "--config.a_b-c", "-x-y", "--",
        "--require-all"]


@pytest.mark.parametrize("name, args, check", [
    ("bench", [], lambda c: c.model.unet.model_channels == 32),
    ("bench", ["--config", "configs/tiny.py:size=medium", "--config.runtime.dtype=bfloat16"],
     lambda c: c.model.unet.model_channels == 64 and c.runtime.dtype == "bfloat16"),
    ("bench", ["--config=configs/mvrag_sd21.py"], lambda c: c.model.unet.model_channels == 320),
    ("data", ["--config.data_dir", "/elsewhere"], lambda c: c.data_dir == "/elsewhere"),
])
def test_configs_load_from_any_directory(tmp_path, monkeypatch, name, args, check):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged configs are used
    fv, _ = parse(COMMANDS[name], args)
    assert check(fv.config)


def test_config_relative_to_the_working_directory_wins(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.py").write_text(
        "from configs import tiny\ndef get_config(arg=None):\n    c = tiny.get_config(arg)\n"
        "    c.runtime.dtype = 'bfloat16'\n    return c\n")
    monkeypatch.chdir(tmp_path)
    fv, _ = parse(COMMANDS["bench"], ["--config", "configs/tiny.py"])
    assert fv.config.runtime.dtype == "bfloat16"


def test_missing_config_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["mvrag", "bench", "unet", "--config", "configs/nope.py"]) == 2
    err = capsys.readouterr().err
    assert "configs/nope.py" in err and "configs/tiny.py" in err and "Traceback" not in err


def test_verify_reference_with_no_cases_is_an_error(tmp_path, capsys):
    args = ["mvrag", "verify-reference", "--release", str(TINY_RELEASE), "--cases", str(tmp_path),
            "--compile_cache_dir", "none"]
    assert main(args) == 2
    assert "holds no *.npz cases" in capsys.readouterr().err
    (tmp_path / "mystery.npz").write_bytes((CASES / "camera.npz").read_bytes())
    assert main(args + ["--only", "camera"]) == 2
    err = capsys.readouterr().err
    assert "none of --only ['camera'] is present" in err and "mystery" in err


def test_convert_refuses_an_existing_out_before_converting(tmp_path, monkeypatch, capsys):
    import mvrag_jax.convert as convert

    def fail(*args):
        raise AssertionError("converted a component although --out exists")

    monkeypatch.setattr(convert, "convert_component", fail)
    (tmp_path / "o").mkdir()
    assert main(["mvrag", "convert", "--release", str(TINY_RELEASE), "--out", str(tmp_path / "o"),
                 "--compile_cache_dir", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err
