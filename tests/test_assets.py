"""Offline assets: prepare_models idempotence, corruption detection, tiktoken, SmolLM2."""

import pytest
from django.core.management import call_command

from tokenflow_site import assets


def test_prepare_models_twice_reuses_the_cache(capsys):
    call_command("prepare_models")
    call_command("prepare_models")
    out = capsys.readouterr().out.splitlines()[-5:]
    assert any(line.startswith("smollm2: ok (cached)") for line in out)
    assert any(line.startswith("tiktoken: ok (cached)") for line in out)
    assert any(line.startswith("minilm-static: ok (cached)") for line in out)
    assert any(line.startswith("minilm-onnx: ok (cached)") for line in out)


def test_manifest_detects_truncated_and_corrupt_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x" * 100)
    assets._write_manifest(tmp_path)
    assert assets.manifest_ok(tmp_path, deep=True)
    (tmp_path / "weights.bin").write_bytes(b"y" * 100)  # same size, other content
    assert assets.manifest_ok(tmp_path) and not assets.manifest_ok(tmp_path, deep=True)
    (tmp_path / "weights.bin").write_bytes(b"x" * 10)
    assert not assets.manifest_ok(tmp_path)


def test_half_written_cache_is_not_accepted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not assets.manifest_ok(tmp_path)  # no manifest: conversion never finished


def test_corrupt_tiktoken_file_is_rebuilt(settings, tmp_path):
    settings.TOKENFLOW_MODEL_DIR = tmp_path
    assert set(assets.prepare_tiktoken()) == {"cl100k_base", "o200k_base"}
    victim = next((tmp_path / "tiktoken").iterdir())
    victim.write_bytes(b"garbage")
    assert len(assets.prepare_tiktoken()) == 1
    assert assets.prepare_tiktoken() == []


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_tiktoken_encodings_load_offline(name):
    import tiktoken

    encoding = tiktoken.get_encoding(name)
    assert encoding.decode(encoding.encode("TokenFlow streams tokens.")) == (
        "TokenFlow streams tokens."
    )


def test_minilm_is_located_without_download():
    assert (assets.minilm_path() / "config.json").is_file()


@pytest.mark.model
def test_converted_smollm2_knows_paris():
    import torch

    from routing.local_model import load_local_model

    tokenizer, model = load_local_model()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.model
def test_local_model_applies_thread_setting_in_the_calling_thread(settings):
    import threading

    import torch

    from routing.local_model import load_local_model

    load_local_model()
    before = torch.get_num_threads()
    settings.TOKENFLOW_LOCAL_THREADS = 3 if before != 3 else 2
    seen = []

    def generating_thread() -> None:
        load_local_model()
        seen.append(torch.get_num_threads())
        torch.set_num_threads(before)  # leave the process as it was

    worker = threading.Thread(target=generating_thread)
    worker.start()
    worker.join(timeout=120)
    assert seen == [settings.TOKENFLOW_LOCAL_THREADS]
