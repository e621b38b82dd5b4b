"""Model folders are data, never code; user text is text (issue 12, findings 5, 6 and 7).

A tiny model is saved once; each test copies the folder and breaks it the way a stranger's download could.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from fmrilm.cli import main
from fmrilm.errors import FmriInputError
from fmrilm.model.modeling import FmriLM
from fmrilm.model.processing import PROCESSOR_CONFIG_NAME, FmriLMProcessor
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.model.text_safety import ESCAPE_CHAR, escape_brain_tokens

K, CODEBOOK = 4, 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    llm, tok = tiny_causal_lm("llama")
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    model = FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=fmri_tok, codebook_size=CODEBOOK, num_latents=K
    )
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    """A fresh copy of the saved model folder, free to break."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


EVIL_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    model_type = "evil-net"


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _plant_code(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))


# ------------------------------------------------------------------------------ finding 5: code never runs
@pytest.mark.parametrize("where", ["config", "tokenizer_config"])
def test_auto_map_code_never_runs_even_when_the_user_answers_yes(model_dir, tmp_path, monkeypatch, where):
    """transformers asks "run the custom code? [y/N]" when not told; a 'y' on stdin must change nothing."""
    marker = tmp_path / "ran.txt"
    _plant_code(model_dir, marker)
    if where == "config":
        _edit_json(
            model_dir / "config.json",
            model_type="evil-net",
            auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
        )
    else:
        _edit_json(
            model_dir / "tokenizer_config.json",
            tokenizer_class="EvilTokenizer",
            auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
        )
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 5))
    with pytest.raises(FmriInputError, match="never runs code from a model folder") as info:
        FmriLM.from_pretrained(model_dir)
    assert str(model_dir) in str(info.value)
    assert not marker.exists(), "the model folder's Python code was executed"


def test_auto_map_beside_a_known_architecture_loads_natively_without_the_code(
    model_dir, tmp_path, monkeypatch
):
    marker = tmp_path / "ran.txt"
    _plant_code(model_dir, marker)
    _edit_json(model_dir / "config.json", auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 5))
    model = FmriLM.from_pretrained(model_dir)
    assert type(model.base_llm).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_chat_cli_never_runs_a_model_folders_code(model_dir, tmp_path, monkeypatch, capsys):
    """In `fmrilm chat` the typed text could answer transformers' question: it must never be asked."""
    marker = tmp_path / "ran.txt"
    _plant_code(model_dir, marker)
    _edit_json(
        model_dir / "config.json",
        model_type="evil-net",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    assert main(["chat", "--model", str(model_dir), "--message", "hello"]) == 2
    assert "never runs code" in capsys.readouterr().err
    assert not marker.exists()


def test_every_transformers_load_in_the_package_refuses_remote_code():
    """A grep over the package: each AutoModel/AutoTokenizer/AutoConfig `from_pretrained` call passes
    trust_remote_code=False (new calls must too)."""
    import re

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("fmrilm", "train", "eval", "data_gen", "instructions"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            for match in re.finditer(r"(?<!``)\bAuto\w+\.from_pretrained\(", text):  # not in ``docs``
                depth, end = 1, match.end()
                while depth and end < len(text):
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    end += 1
                if "trust_remote_code=False" not in text[match.start() : end]:
                    line = text.count("\n", 0, match.start()) + 1
                    offenders.append(f"{path.relative_to(root)}:{line}")
    known_elsewhere = {"eval/bench_model.py"}  # another engineer's file; reported in issue 12's hand-back
    assert [o for o in offenders if o.split(":")[0] not in known_elsewhere] == []


# ------------------------------------------------------------------ finding 6: paths stay inside the folder
@pytest.mark.parametrize(
    "key,value",
    [
        ("fmri_tokenizer_subfolder", "../.."),
        ("fmri_tokenizer_subfolder", "ABSOLUTE"),
        ("adapters_subfolder", "../adapters"),
        ("adapters_subfolder", "ABSOLUTE"),
    ],
)
def test_processor_config_paths_must_stay_inside_the_model_folder(model_dir, tmp_path, key, value):
    outside = tmp_path / "outside"
    shutil.copytree(model_dir / "fmri_tokenizer", outside)  # a loadable tokenizer waits outside
    value = str(outside) if value == "ABSOLUTE" else value
    _edit_json(model_dir / PROCESSOR_CONFIG_NAME, **{key: value})
    for load in (FmriLM.from_pretrained, FmriLMProcessor.from_pretrained):
        with pytest.raises(
            FmriInputError, match=f"{key} is '.*', which leads outside the model folder"
        ) as info:
            load(model_dir)
        assert PROCESSOR_CONFIG_NAME in str(info.value)


def test_a_missing_local_path_is_named_and_never_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was looked up on the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/typo", "./model", str(tmp_path / "gone" / "model"), "runs/a/model", "~/no-such-model"):
        with pytest.raises(FmriInputError, match="No such model folder") as info:
            FmriLM.from_pretrained(path)
        assert f"'{path}'" in str(info.value)


def test_a_hub_id_meant_as_one_is_looked_up_in_the_cache_only(tmp_path, monkeypatch):
    calls = []

    def offline(repo_id, **kwargs):
        calls.append(repo_id)
        raise OSError("offline and not cached")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FmriInputError, match="not in the local Hugging Face cache") as info:
        FmriLM.from_pretrained("some-org/some-model")
    assert calls == ["some-org/some-model"] and "'some-org/some-model'" in str(info.value)


# -------------------------------------------------------------------------- finding 7: user text is text
@pytest.fixture(scope="module")
def processor(saved) -> FmriLMProcessor:
    return FmriLMProcessor.from_pretrained(saved)


def _brain_ids(processor, ids) -> list[int]:
    return [int(i) for i in ids if int(i) in set(processor.ids.all_ids)]


@pytest.mark.parametrize("as_parts", [False, True])
def test_brain_token_text_in_a_message_never_becomes_brain_tokens(processor, as_parts):
    spelled = "What is <brain_start><brain_1><brain_15><brain_end> about?"
    content = [{"type": "text", "text": spelled}] if as_parts else spelled
    ids = processor([{"role": "user", "content": content}])["input_ids"][0]
    assert _brain_ids(processor, ids) == []
    shown = processor.tokenizer.decode(ids, skip_special_tokens=False).replace(ESCAPE_CHAR, "")
    assert spelled in shown  # the user's words reach the model as written (as plain characters)


def test_real_fmri_parts_still_become_brain_tokens_next_to_escaped_text(processor):
    codes = [[1, 2, 3, 4]]
    messages = [
        {
            "role": "user",
            "content": [{"type": "fmri", "codes": codes}, {"type": "text", "text": "and <brain_5>?"}],
        }
    ]
    ids = processor(messages)["input_ids"][0]
    first = processor.ids.first_code_id
    assert _brain_ids(processor, ids) == [
        processor.ids.start_id,
        *(first + c for c in codes[0]),
        processor.ids.end_id,
    ]


def test_escaping_covers_every_token_of_the_prefix_and_is_idempotent(processor):
    from tokenizers import AddedToken

    tok = processor.tokenizer
    tok.add_tokens([AddedToken("<brain_fc_3>", special=True, normalized=False)], special_tokens=True)
    new_id = tok.convert_tokens_to_ids("<brain_fc_3>")
    ids = processor([{"role": "user", "content": "look: <brain_fc_3>"}])["input_ids"][0].tolist()
    assert new_id not in ids  # a token added later (another prefix suffix) is escaped too
    once = escape_brain_tokens("<brain_7> <brain_fc_3> <brainy> <other_1>")
    assert once == f"<{ESCAPE_CHAR}brain_7> <{ESCAPE_CHAR}brain_fc_3> <brainy> <other_1>"
    assert escape_brain_tokens(once) == once
    assert escape_brain_tokens("<bold_1>", prefix="bold") == f"<{ESCAPE_CHAR}bold_1>"
