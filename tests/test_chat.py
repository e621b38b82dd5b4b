"""Chat about scans: `FmriLM.chat` / `ChatSession` in Python and `fmrilm chat` in a subprocess.

A tiny Llama is trained for a few seconds to name which of two scans it is shown ("Visual regions." for one,
"Salience network." for the other, also when both are in one conversation), so the tests can tell that an
answer is really about the scan that was attached, through the saved folder, the processor and the CLI.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fmrilm.chat import ChatSession, load_chat_scan
from fmrilm.errors import FmriInputError
from fmrilm.model.modeling import BrainCodesOnly, FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan

K, CODEBOOK, WINDOW, T = 4, 16, 16, 32
QUESTION = "Which scan is this?"
ANSWERS = ("Visual regions.", "Salience network.")
NEW_TOKENS = 12


def _candidate_scans(atlas) -> list[Scan]:
    """Scans of different temporal structure; the fixture keeps the two the tiny tokenizer tells apart best."""
    t = np.arange(T, dtype=np.float32)[:, None]
    phase = np.linspace(0, 3, atlas.n_regions, dtype=np.float32)[None]
    scans = [random_scan(T, atlas, seed=s, scan_id=f"noise{s}") for s in range(3)]
    for f in (0.05, 0.2, 0.45):
        scans.append(Scan(np.sin(2 * np.pi * f * t + phase), 2.0, atlas, scan_id=f"sine{f}"))
    walk = np.cumsum(np.random.default_rng(0).standard_normal((T, atlas.n_regions)), axis=0)
    scans.append(Scan(walk, 2.0, atlas, scan_id="walk"))
    return scans


def _signal_sensitive(fmri_tok):
    """Stand-in for a trained tokenizer: an untrained one gives almost every scan the same codes, so its weight
    matrices get a large random component (seeded), which makes the codes depend on the signal."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in fmri_tok.parameters():
            if param.ndim >= 2:
                param.add_(torch.randn(param.shape, generator=gen) * 3.0 / param.shape[-1] ** 0.5)
    return fmri_tok


def _train(model: FmriLM, codes: list[np.ndarray]) -> None:
    """Full fine-tuning of the tiny LLM until it names each scan, alone or after the other one."""

    def user(c):
        return {
            "role": "user",
            "content": [{"type": "fmri", "codes": c.tolist()}, {"type": "text", "text": QUESTION}],
        }

    def assistant(i):
        return {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i]}]}

    convs = [[user(codes[0]), assistant(0)], [user(codes[1]), assistant(1)]]
    convs += [[user(codes[i]), assistant(i), user(codes[1 - i]), assistant(1 - i)] for i in (0, 1)]
    batch = model.processor.pad([model.processor.training_example(c) for c in convs])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.llm.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.005:
            break
    model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A saved tiny FmriLM (atlas dosenbach160 in its processor config) and two scan files it can tell apart."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chat")
    llm, tok = tiny_causal_lm("llama")
    fmri_tok = _signal_sensitive(
        tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K, window_length=WINDOW)
    )
    atlas = random_scan(T).atlas
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=atlas)

    paths = []
    for scan in _candidate_scans(atlas):
        path = root / f"{scan.scan_id}.1D"
        np.savetxt(path, scan.timeseries)
        (root / f"{scan.scan_id}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        paths.append(path)
    codes = [model.processor.encode_scan(load_chat_scan(p, model=model)) for p in paths]
    a, b = max(combinations(range(len(paths)), 2), key=lambda ij: int((codes[ij[0]] != codes[ij[1]]).sum()))
    assert (codes[a] != codes[b]).any(), "the tiny fMRI tokenizer gives every candidate scan the same codes"
    _train(model, [codes[a], codes[b]])
    model.save_pretrained(root / "model")

    bad = root / "bad.1D"
    bad.write_text("0.1 0.2 0.3\nnot a number\n")
    return SimpleNamespace(
        model_dir=root / "model", scans=[paths[a], paths[b]], codes=[codes[a], codes[b]], bad=bad
    )


@pytest.fixture(scope="module")
def model(trained) -> FmriLM:
    return FmriLM.from_pretrained(trained.model_dir)


def _brain_counts(model: FmriLM, history) -> tuple[int, int]:
    """(start markers, code tokens) in the prompt the history renders to."""
    ids = model.processor(history)["input_ids"][0]
    pid = model.processor.ids
    codes = ((ids >= pid.first_code_id) & (ids < pid.first_code_id + CODEBOOK)).sum()
    return int((ids == pid.start_id).sum()), int(codes)


# ------------------------------------------------------------------------------------------------ Python
def test_chat_answers_about_the_given_scan(trained, model):
    scan_a, scan_b = (load_chat_scan(p, model=model) for p in trained.scans)
    answer_a, history = model.chat(scan_a, QUESTION, max_new_tokens=NEW_TOKENS)
    answer_b, _ = model.chat(scan_b, QUESTION, max_new_tokens=NEW_TOKENS)
    assert (answer_a, answer_b) == ANSWERS
    assert [m["role"] for m in history] == ["user", "assistant"]
    fmri = [p for p in history[0]["content"] if p["type"] == "fmri"]
    assert len(fmri) == 1 and np.array_equal(fmri[0]["codes"], trained.codes[0])
    n_windows = len(trained.codes[0])
    assert _brain_counts(model, history) == (
        1,
        K * n_windows,
    )  # the fMRI part became brain tokens in the prompt
    json.dumps(history)  # a conversation can be saved as it is


def test_history_continues_and_keeps_earlier_scans(trained, model):
    first, history = model.chat(trained.scans[0], QUESTION, max_new_tokens=NEW_TOKENS)  # a path works too
    second, history2 = model.chat(trained.scans[1], QUESTION, history, max_new_tokens=NEW_TOKENS)
    assert (
        first,
        second,
    ) == ANSWERS  # it answers about the scan attached last, with the first one in context
    assert len(history) == 2 and len(history2) == 4  # the caller's history is not modified
    windows = len(trained.codes[0]) + len(trained.codes[1])
    assert _brain_counts(model, history2) == (2, K * windows)

    first, history = model.chat(trained.scans[1], QUESTION, max_new_tokens=NEW_TOKENS)
    second, history = model.chat(trained.scans[0], QUESTION, history, max_new_tokens=NEW_TOKENS)
    assert (first, second) == ANSWERS[::-1]

    _, history3 = model.chat(None, "Thanks.", history2, max_new_tokens=2)  # a turn without a new scan
    assert len(history3) == 6 and _brain_counts(model, history3) == (2, K * windows)


def test_a_batch_of_chats_answers_each_as_it_would_alone(trained, model):
    """`chat_batch` (the demo's chat rates on held-out scans) generates many conversations in left-padded
    batches: each answer and history is what `chat` gives that conversation alone, prompts of other lengths
    beside it included (a continued chat is longer than a fresh one)."""
    from fmrilm.chat import chat_batch

    scan_a, scan_b = (load_chat_scan(p, model=model) for p in trained.scans)
    first, history = model.chat(scan_a, QUESTION, max_new_tokens=NEW_TOKENS)
    alone = [
        model.chat(scan_b, QUESTION, max_new_tokens=NEW_TOKENS),
        model.chat(None, QUESTION, history, max_new_tokens=NEW_TOKENS),
        (first, history),
    ]
    together = chat_batch(
        model,
        [scan_b, None, scan_a],
        QUESTION,
        [None, history, None],
        max_new_tokens=NEW_TOKENS,
        batch_size=2,
    )
    assert [a for a, _ in together] == [a for a, _ in alone] and together[0][0] != together[2][0]
    assert [json.dumps(h) for _, h in together] == [json.dumps(h) for _, h in alone]
    with pytest.raises(FmriInputError, match="one history"):
        chat_batch(model, [scan_a, scan_b], QUESTION, [None])
    with pytest.raises(FmriInputError, match="batch_size"):
        chat_batch(model, [scan_a], QUESTION, batch_size=0)


def test_the_chat_benchmark_compares_one_by_one_with_batched_chats(trained, model):
    from fmrilm.eval.bench_chat import compare_sequential

    scans = [load_chat_scan(p, model=model) for p in trained.scans]
    one, batch, same, n = compare_sequential(model, scans, [QUESTION, "Which scan?"])
    assert n == 4 and same == 4 and one > 0 and batch > 0


def test_streaming_sends_the_answer_as_it_is_generated(trained, model, capsys):
    pieces: list[str] = []
    answer, _ = model.chat(trained.codes[1], QUESTION, stream=pieces.append, max_new_tokens=NEW_TOKENS)
    assert answer == ANSWERS[1] and "".join(pieces).strip() == answer
    capsys.readouterr()
    model.chat(trained.codes[0], QUESTION, stream=True, max_new_tokens=NEW_TOKENS)
    assert capsys.readouterr().out.strip() == ANSWERS[0]


def test_brain_tokens_in_an_answer_stay_out_of_the_text(trained, model):
    ids = model.processor.ids
    only_codes = [BrainCodesOnly(ids.first_code_id, CODEBOOK)]
    pieces: list[str] = []
    answer, history = model.chat(
        trained.codes[0],
        QUESTION,
        stream=pieces.append,
        max_new_tokens=K,
        min_new_tokens=K,
        logits_processor=only_codes,
        text_only=False,  # the chat forbids brain tokens by default (tests/test_chat_text_only.py)
    )
    assert answer == "" and "".join(pieces) == ""
    written = [p for p in history[-1]["content"] if p["type"] == "fmri"]
    assert len(written) == 1 and np.asarray(written[0]["codes"]).shape == (1, K)  # kept for the next turn


def test_session_reuses_the_kv_cache_between_turns(trained, model):
    answers, prefill = {}, {}
    for reuse in (True, False):
        session = ChatSession(model, reuse_cache=reuse, max_new_tokens=NEW_TOKENS)
        session.attach(trained.scans[0])
        got = [session.ask(QUESTION)]
        session.attach(trained.scans[1])
        got.append(session.ask(QUESTION))
        answers[reuse], prefill[reuse] = got, session.last_prefill_tokens
        assert len(session.history) == 4
        session.reset()
        assert session.history == [] and session.pending == []
    assert answers[True] == answers[False] == list(ANSWERS)
    assert prefill[True] < prefill[False] / 2  # the second turn ran over its new message, not the whole chat


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_cached_turns_match_recomputed_turns_on_other_architectures(arch):
    llm, tok = tiny_causal_lm(arch)
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K, window_length=WINDOW)
    lm = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).eval()
    scans = [random_scan(T, seed=s, scan_id=f"s{s}") for s in range(2)]
    runs = []
    for reuse in (True, False):
        torch.manual_seed(0)
        session = ChatSession(lm, reuse_cache=reuse, max_new_tokens=6, do_sample=True)
        runs.append(
            [session.ask("Describe it.", scans[0]), session.ask("And this?", scans[1]), session.ask("Why?")]
        )
        assert _brain_counts(lm, session.history) == (2, K * 4)
    assert runs[0] == runs[1]


def test_python_api_errors_are_one_clear_sentence(trained, model):
    with pytest.raises(FmriInputError, match=r"bad\.1D.*Non-numeric cell.*Fix:"):
        model.chat(trained.bad, QUESTION)
    with pytest.raises(FmriInputError, match=r"Unknown atlas 'nowhere300'.*Fix: use one of"):
        load_chat_scan(trained.scans[0], atlas="nowhere300", model=model)
    with pytest.raises(
        FmriInputError,
        match="300 region columns but atlas 'dosenbach160'.*Fix: give the atlas the scan was parcellated with; this model's atlas",
    ):
        ChatSession(model).attach(_write_table(trained, "seitzman300"))
    with pytest.raises(FmriInputError, match="list of chat messages"):
        model.chat([{"role": "user", "content": QUESTION}], QUESTION)


def _write_table(trained, atlas: str) -> Path:
    """A region table of another atlas than the model's, for the implicit-atlas error."""
    path = trained.model_dir.parent / f"{atlas}.1D"
    np.savetxt(path, random_scan(T, atlas).timeseries)
    (path.parent / f"{atlas}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    return path


# --------------------------------------------------------------------------------------------------- CLI
def _cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "fmrilm.cli", "chat", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_one_shot_message_prints_the_answer(trained):
    args = ["--model", trained.model_dir, "--scan", trained.scans[1], "--tr", "2.0"]
    done = _cli(*args, "--message", QUESTION, "--max-new-tokens", NEW_TOKENS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ANSWERS[1]
    assert "Traceback" not in done.stderr


def test_cli_interactive_two_turns_with_a_scan_attached(trained):
    script = f"{QUESTION}\n/scan {trained.scans[1]}\n{QUESTION}\n"  # ends at end of input
    done = _cli(
        "--model", trained.model_dir, "--scan", trained.scans[0], "--max-new-tokens", NEW_TOKENS, stdin=script
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [ANSWERS[0], ANSWERS[1], ""]
    assert f"attached '{trained.scans[1].stem}'" in done.stderr and "Traceback" not in done.stderr


def test_cli_commands_bad_scans_reset_and_quit(trained, monkeypatch, capsys):
    """In-process (`cli.main`, stdin replaced): a bad /scan is reported and the conversation goes on."""
    from transformers.utils import logging as hf_logging

    from fmrilm.cli import main

    a, b = trained.scans
    script = f"/scan {trained.bad}\n{QUESTION}\n/scan {a}\n{QUESTION}\n/bogus\n/reset\n{QUESTION}\n/quit\n{QUESTION}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert hf_logging.is_progress_bar_enabled()
    code = main(["chat", "--model", str(trained.model_dir), "--scan", str(b), "--no-stream"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "Loading weights" not in err  # transformers' bars stay out of a chat...
    assert hf_logging.is_progress_bar_enabled()  # ...and are back on for the caller afterwards
    assert out.split("\n") == [
        ANSWERS[1],
        ANSWERS[0],
        ANSWERS[1],
        "",
    ]  # reset re-attaches --scan; nothing after /quit
    assert "error: File" in err and "Non-numeric cell" in err and "unknown command /bogus" in err


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "malformed",
            r"^fmrilm chat: error: File '.*bad\.1D' and subject 'bad': Non-numeric cell .*\. Fix: .*\.$",
        ),
        (
            "atlas",
            r"^fmrilm chat: error: File '.*' and subject '.*': Unknown atlas 'nowhere300'\. Fix: .*\.$",
        ),
    ],
)
def test_cli_bad_input_is_one_sentence_and_exit_2(trained, case, expected):
    import re

    scan = trained.bad if case == "malformed" else trained.scans[0]
    extra = ["--atlas", "nowhere300"] if case == "atlas" else []
    done = _cli("--model", trained.model_dir, "--scan", scan, *extra, "--message", QUESTION)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert re.match(expected, done.stderr.strip()) and len(done.stderr.strip().splitlines()) == 1
