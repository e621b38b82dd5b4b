"""A chat that stays a chat: no library warning in the conversation, /help, Ctrl-C stops only the answer.

The model is a tiny random Llama with LoRA adapters saved the way training saves them; its answers are noise,
which is all these tests need. The chat runs in a process where loading the adapters raises a planted library
deprecation (a FutureWarning from peft's own module, as peft's read of transformers' ``is_gradient_checkpointing``
used to): where it goes shows where any library warning goes, whatever the installed versions warn about.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> SimpleNamespace:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chat_clean")
    llm, tok = tiny_causal_lm("llama")
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4, window_length=16)
    scan = random_scan(32)
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=scan.atlas, lora=True)
    model.save_pretrained(root / "model")
    paths = []
    for i in range(2):
        path = root / f"scan{i}.1D"
        np.savetxt(path, random_scan(32, seed=i).timeseries)
        (root / f"scan{i}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        paths.append(path)
    return SimpleNamespace(model_dir=root / "model", scans=paths, root=root)


PLANTED = "planted library deprecation"
#: `fmrilm chat` with peft's adapter loading made to warn first, as a library does (from its own module)
CHAT_WITH_A_LIBRARY_WARNING = f"""
import sys, warnings
import peft
from peft import peft_model

load = peft.PeftModel.from_pretrained.__func__

def warning_load(cls, *args, **kwargs):
    warnings.warn_explicit({PLANTED!r}, FutureWarning, peft_model.__file__, 1, module="peft.peft_model")
    return load(cls, *args, **kwargs)

peft.PeftModel.from_pretrained = classmethod(warning_load)
from fmrilm.cli import main
sys.exit(main(["chat", *sys.argv[1:]]))
"""


def _chat(*args, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONWARNINGS", None)  # Python's default warning filters: FutureWarnings are shown
    return subprocess.run(
        [sys.executable, "-c", CHAT_WITH_A_LIBRARY_WARNING, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_normal_conversation_shows_no_library_warning(saved):
    log = saved.root / "chat.log"
    script = (
        f"Which networks are most strongly coupled?\n/help\n/scan {saved.scans[1]}\nAnd in this one?\n/quit\n"
    )
    args = ["--model", saved.model_dir, "--scan", saved.scans[0], "--max-new-tokens", "8"]
    done = _chat(*args, "--log-file", log, stdin=script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    assert not [line for line in lines if "Warning" in line or "warnings.warn" in line], lines
    assert "/help" in done.stderr and "Ctrl-C" in done.stderr  # /help lists the commands
    assert "attached 'scan1'" in done.stderr and len(done.stdout.split("\n")) == 3  # two answers
    # what was kept out of the conversation is in the log
    assert PLANTED in log.read_text() and PLANTED not in done.stderr


def test_verbose_shows_library_warnings(saved):
    done = _chat(
        "--model", saved.model_dir, "--scan", saved.scans[0], "--max-new-tokens", "4", "--verbose",
        stdin="Hello?\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "FutureWarning" in done.stderr and PLANTED in done.stderr


def test_loading_a_model_in_python_shows_no_library_deprecation(saved):
    """`FmriLM.from_pretrained` in a user's own script (no CLI routing): peft's read of transformers'
    deprecated ``is_gradient_checkpointing`` while loading the adapters is kept quiet at its source."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = FmriLM.from_pretrained(saved.model_dir)
    assert model.has_adapters
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], [
        str(w.message) for w in caught
    ]


def test_no_deprecated_cache_argument_reaches_transformers(saved):
    """The KV cache goes to generate under the name this transformers expects (no FutureWarning as an error)."""
    from fmrilm.chat import ChatSession

    model = FmriLM.from_pretrained(saved.model_dir)
    session = ChatSession(model, max_new_tokens=4)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        session.ask("First question?", saved.scans[0])
        session.ask("Second question?")  # reuses the cache of the first turn
    assert session.last_prefill_tokens < len(model.processor(session.history)["input_ids"][0])


def test_ctrl_c_stops_the_answer_not_the_conversation(monkeypatch, capsys):
    from fmrilm import chat_cli

    class Session:
        processor = None
        calls: list[str] = []

        def ask(self, message, stream=None):
            self.calls.append(message)
            if len(self.calls) == 1:
                raise KeyboardInterrupt  # the user pressed Ctrl-C while the first answer was generated
            return "second answer"

    session = Session()
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    args = SimpleNamespace(model="m")
    assert chat_cli._interactive(session, [], args, None, None) == 0
    out, err = capsys.readouterr()
    assert session.calls == ["first", "second"]
    assert out.splitlines() == ["", "second answer"] and "answer stopped" in err


def test_a_log_file_in_a_missing_folder_is_one_sentence(saved):
    done = _chat("--model", saved.model_dir, "--log-file", saved.root / "nowhere" / "x.log", stdin="")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Cannot open the log file" in done.stderr


def test_library_progress_bars_are_off_inside_the_block_and_restored_after():
    """Commands that print their own progress turn transformers' bars off, without leaving them off for the
    caller (a notebook or test that ran the command in-process)."""
    from transformers.utils import logging as transformers_logging

    from fmrilm.logs import no_library_progress_bars

    transformers_logging.enable_progress_bar()
    with no_library_progress_bars():
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    with no_library_progress_bars():
        pass
    assert not transformers_logging.is_progress_bar_enabled()  # a caller's own choice stays as it was
    transformers_logging.enable_progress_bar()
