"""mvrag_jax/inputs/text.py: the official prompt rule and tokenization, against the clip_text reference case."""

import json
import logging
import shutil

import numpy as np
import pytest

from mvrag_jax.inputs.release import Release
from mvrag_jax.inputs.text import PromptError, load_tokenizer, process_prompt, prompt_input_ids, tokenize
from tests.conftest import TINY_RELEASE, load_case


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(Release.open(TINY_RELEASE))


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("clip_text")


def test_prompt_rule_matches_official_processed_prompts(case):
    assert [process_prompt(str(p)) for p in case["prompts"]] == [str(p) for p in case["processed_prompts"]]


@pytest.mark.parametrize("prompt, processed", [
    ("A red car.", "A red car, 3d asset"),
    ("A red car..", "A red car., 3d asset"),  # ONE trailing '.' is dropped
    ("A red car", "A red car, 3d asset"),
    ("", ", 3d asset"),
    (".", ", 3d asset"),
])
def test_prompt_rule_drops_one_trailing_dot_and_appends_suffix(prompt, processed):
    assert process_prompt(prompt) == processed


def test_non_string_prompt_is_rejected():
    with pytest.raises(PromptError, match="must be a string, got int"):
        process_prompt(3)


def test_token_ids_match_official_tokenizer_output(tokenizer, case):
    ids = tokenize(tokenizer, [str(p) for p in case["processed_prompts"]])
    assert ids.dtype == np.int32 and ids.shape == (4, 77)
    np.testing.assert_array_equal(ids, case["input_ids"])
    np.testing.assert_array_equal(tokenize(tokenizer, [""]), case["uncond_input_ids"])


def test_ids_are_bos_text_eos_then_exclamation_padding(tokenizer):
    (ids,) = tokenize(tokenizer, ["a cat"])
    eos = int(np.flatnonzero(ids == tokenizer.eos_token_id)[0])
    assert ids[0] == tokenizer.bos_token_id and eos > 1
    assert tokenizer.convert_ids_to_tokens(int(ids[-1])) == "!"
    assert np.all(ids[eos + 1:] == tokenizer.convert_tokens_to_ids("!"))


def test_cfg_ids_are_unsuffixed_negative_then_processed_prompt(tokenizer, case):
    ids = prompt_input_ids(tokenizer, str(case["encode_prompt_prompt"]))
    assert ids.shape == (2, 77)
    np.testing.assert_array_equal(ids[0], case["uncond_input_ids"][0])
    np.testing.assert_array_equal(ids[1], case["input_ids"][0])  # prompts[0] is the encode_prompt prompt


def test_negative_prompts_are_used_verbatim_per_prompt(tokenizer):
    ids = prompt_input_ids(tokenizer, ["a cat.", "a dog"], negative_prompt="blurry")
    np.testing.assert_array_equal(ids[:2], tokenize(tokenizer, ["blurry", "blurry"]))
    np.testing.assert_array_equal(ids[2:], tokenize(tokenizer, ["a cat, 3d asset", "a dog, 3d asset"]))
    listed = prompt_input_ids(tokenizer, ["a cat", "a dog"], negative_prompt=["x", "y"])
    np.testing.assert_array_equal(listed[:2], tokenize(tokenizer, ["x", "y"]))


def test_negative_prompt_count_must_match(tokenizer):
    with pytest.raises(PromptError, match="2 negative prompts for 1 prompts"):
        prompt_input_ids(tokenizer, "a cat", negative_prompt=["x", "y"])
    with pytest.raises(PromptError, match="no prompt given"):
        prompt_input_ids(tokenizer, [])


def test_long_prompts_are_truncated_with_eos_and_logged(tokenizer, caplog):
    long = " ".join(["red car"] * 60)
    with caplog.at_level(logging.WARNING, logger="mvrag_jax.inputs.text"):
        (ids,) = tokenize(tokenizer, [long])
    assert ids.shape == (77,) and ids[-1] == tokenizer.eos_token_id
    assert "truncated to 77 tokens" in caplog.text
    caplog.clear()
    tokenize(tokenizer, ["short"])
    assert caplog.text == ""


def test_tokenizer_without_max_length_is_rejected(tmp_path):
    shutil.copy(TINY_RELEASE / "model_index.json", tmp_path)
    shutil.copytree(TINY_RELEASE / "tokenizer", tmp_path / "tokenizer")
    config_path = tmp_path / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["model_max_length"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(PromptError, match="model_max_length"):
        load_tokenizer(Release.open(tmp_path))
