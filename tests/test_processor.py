"""FmriLMProcessor: fMRI parts become start marker + K codes per window + end marker, in the model's own template."""

from __future__ import annotations

import numpy as np
import pytest

from fmrilm.errors import FmriInputError
from fmrilm.model.processing import IGNORE_INDEX, FmriLMProcessor, FmriProcessorConfig
from fmrilm.model.testing import random_scan, tiny_fmri_tokenizer, tiny_text_tokenizer

K, CODEBOOK = 4, 24


def make_processor(template: str = "chatml", fmri_tokenizer=None) -> FmriLMProcessor:
    config = FmriProcessorConfig(codebook_size=CODEBOOK, num_latents=K)
    if fmri_tokenizer is not None:
        config.codebook_size = fmri_tokenizer.config.codebook_size
        config.num_latents = fmri_tokenizer.config.num_latents
    return FmriLMProcessor(tiny_text_tokenizer(template), fmri_tokenizer, config)


def codes(n_windows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CODEBOOK, (n_windows, K))


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


FMRI = {"type": "fmri"}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def count(ids, proc: FmriLMProcessor) -> tuple[int, int, int]:
    ids = np.asarray(ids)
    lo = proc.ids.first_code_id
    n_codes = int(((ids >= lo) & (ids < lo + proc.config.codebook_size)).sum())
    return n_codes, int((ids == proc.ids.start_id).sum()), int((ids == proc.ids.end_id).sum())


@pytest.mark.parametrize("n_windows", [1, 3, 7])
def test_one_scan_gives_k_codes_per_window_between_markers(n_windows):
    proc = make_processor()
    scan_codes = codes(n_windows)
    ids = proc(user(FMRI, text("Describe this scan.")), [scan_codes])["input_ids"][0].tolist()
    assert count(ids, proc) == (K * n_windows, 1, 1)
    start, end = ids.index(proc.ids.start_id), ids.index(proc.ids.end_id)
    assert end - start - 1 == K * n_windows
    assert proc.ids.codes_from_ids(ids[start + 1 : end]).reshape(-1, K).tolist() == scan_codes.tolist()
    assert proc.n_brain_tokens(n_windows) == end - start + 1


def test_several_scans_in_one_conversation_keep_their_order():
    proc = make_processor()
    a, b, c = codes(1, 1), codes(2, 2), codes(4, 3)
    messages = [
        {"role": "user", "content": [FMRI, text("and"), FMRI]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [text("Now this one:"), FMRI]},
    ]
    ids = proc(messages, [a, b, c])["input_ids"][0].tolist()
    assert count(ids, proc) == (K * 7, 3, 3)
    assert proc.codes_from_ids(ids).tolist() == np.concatenate([a, b, c]).tolist()


def test_prompt_goes_through_the_models_own_chat_template():
    scan_codes = codes(2)
    outputs = {}
    for template in ("chatml", "plain"):
        proc = make_processor(template)
        prompt = proc.apply_chat_template(user(FMRI, text("Describe.")), [scan_codes])
        rendered = proc.render_messages(user(FMRI, text("Describe.")), [scan_codes])
        assert prompt == proc.tokenizer.apply_chat_template(
            rendered, tokenize=False, add_generation_prompt=True
        )
        assert proc.vocab.render(scan_codes) in prompt
        outputs[template] = prompt
    assert outputs["chatml"].startswith("<|im_start|>user\n")
    assert outputs["chatml"].endswith("<|im_start|>assistant\n")
    assert outputs["plain"].startswith("<s>### user:\n")
    assert outputs["plain"].endswith("### assistant:\n")


def test_batch_pads_on_the_left_for_generation_and_counts_each_row():
    proc = make_processor()
    convs = [
        user(FMRI, text("Describe.")),
        user(FMRI, text("Describe this long scan, please.")),
        user(text("hi")),
    ]
    scans = [[codes(1)], [codes(5)], None]
    batch = proc(convs, scans)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 3 and ids.shape == mask.shape
    assert (mask[:, -1] == 1).all(), "left padding: every row ends with a real token"
    for row, n_windows in zip(ids.tolist(), (1, 5, 0), strict=True):
        markers = 1 if n_windows else 0
        assert count(row, proc) == (K * n_windows, markers, markers)
    singles = [proc(c, s)["input_ids"][0].tolist() for c, s in zip(convs, scans, strict=True)]
    for row, m, single in zip(ids.tolist(), mask.tolist(), singles, strict=True):
        assert [t for t, keep in zip(row, m, strict=True) if keep] == single
        assert all(t == proc.tokenizer.pad_token_id for t, keep in zip(row, m, strict=True) if not keep)


def test_scans_are_encoded_by_the_fmri_tokenizer_without_their_padded_end():
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4, window_length=16)
    proc = make_processor(fmri_tokenizer=fmri_tok)
    scans = [random_scan(40, seed=1, scan_id="a"), random_scan(100, seed=2, scan_id="b")]
    masks = [fmri_tok.windows(s)[1] for s in scans]
    assert [m.sum(1).tolist() for m in masks] == [[16, 16, 8], [16] * 6 + [4]]
    ids = proc(user(FMRI, text("vs"), FMRI), scans)["input_ids"][0].tolist()
    assert count(ids, proc) == (4 * (3 + 6), 2, 2)  # the 4-sample end of scan b is not shown
    expected = np.concatenate([fmri_tok.encode(scans[0]).numpy(), fmri_tok.encode(scans[1]).numpy()[:6]])
    assert proc.codes_from_ids(ids).tolist() == expected.tolist()


def test_a_window_is_picked_by_its_index_in_the_scan():
    proc = make_processor()
    proc.config.max_windows = 2
    scan_codes = codes(5)
    ids = proc(user({"type": "fmri", "windows": [1]}), [scan_codes])["input_ids"][0].tolist()
    assert proc.codes_from_ids(ids).tolist() == scan_codes[1:2].tolist()
    with pytest.raises(FmriInputError, match="does not exist"):
        proc(user({"type": "fmri", "windows": [9]}), [scan_codes])


def test_max_windows_keeps_the_last_windows():
    proc = make_processor()
    proc.config.max_windows = 2
    scan_codes = codes(5)
    ids = proc(user(FMRI), [scan_codes])["input_ids"][0].tolist()
    assert proc.codes_from_ids(ids).tolist() == scan_codes[-2:].tolist()


def test_training_labels_cover_only_assistant_turns():
    proc = make_processor()
    messages = [
        {"role": "user", "content": [FMRI, text("Describe.")]},
        {"role": "assistant", "content": "Strong default mode coupling."},
        {"role": "user", "content": "And the next window?"},
        {"role": "assistant", "content": [{"type": "fmri", "codes": codes(1, 9)}]},
    ]
    example = proc.training_example(messages, [codes(2)])
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)
    learned = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels, strict=True))
    decoded = proc.tokenizer.decode(learned)
    assert "Strong default mode coupling." in decoded and decoded.count("<|im_end|>") == 2
    assert "Describe" not in decoded and "next window" not in decoded
    assert count(learned, proc) == (K, 1, 1)  # the answer's window, not the question's two
    prompt_ids = proc(messages[:1], [codes(2)], return_tensors=None)["input_ids"][0]
    assert ids[: len(prompt_ids)] == prompt_ids, "training prefix equals the inference prompt"


def test_pad_for_training_pads_labels_with_ignore_index():
    proc = make_processor()
    examples = [
        proc.training_example(user(FMRI) + [{"role": "assistant", "content": "ok"}], [codes(n)])
        for n in (1, 3)
    ]
    batch = proc.pad(examples)
    assert batch["input_ids"].shape == batch["labels"].shape
    short = batch["attention_mask"][0]
    assert short[-1] == 0 and (batch["labels"][0][short == 0] == IGNORE_INDEX).all()


def test_bad_inputs_fail_with_one_clear_error():
    proc = make_processor()
    with pytest.raises(FmriInputError, match="more .* parts than scans"):
        proc(user(FMRI, FMRI), [codes(1)])
    with pytest.raises(FmriInputError, match="no \\{'type': 'fmri'\\} part left"):
        proc(user(text("hi")), [codes(1)])
    with pytest.raises(FmriInputError, match="shape"):
        proc(user(FMRI), [np.zeros((2, K + 1), dtype=np.int64)])
    with pytest.raises(FmriInputError, match="must lie in"):
        proc(user(FMRI), [np.full((1, K), CODEBOOK, dtype=np.int64)])
    with pytest.raises(FmriInputError, match="no fMRI tokenizer"):
        proc(user(FMRI), [random_scan(32)])


def test_processor_round_trips_through_save(tmp_path):
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    proc = make_processor(fmri_tokenizer=fmri_tok)
    proc.save_pretrained(tmp_path)
    again = FmriLMProcessor.from_pretrained(tmp_path)
    scan = random_scan(50)
    messages = user(FMRI, text("Describe."))
    assert again(messages, [scan])["input_ids"].tolist() == proc(messages, [scan])["input_ids"].tolist()
    assert again.config.to_dict() == proc.config.to_dict()


def test_a_saved_system_prompt_starts_every_prompt_and_training_example(tmp_path):
    """``system_prompt`` replaces the template's default system turn (SmolLM2's costs 21 tokens a prompt) in
    inference prompts and training examples alike; a conversation's own system message wins; saved with it."""
    proc = make_processor()
    proc.config.system_prompt = ""
    qa = user(FMRI, text("Describe.")) + [{"role": "assistant", "content": "ok"}]
    prompt = proc.apply_chat_template(qa[:1], [codes(1)])
    assert prompt.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    example = proc.training_example(qa, [codes(1)])
    prompt_ids = proc(qa[:1], [codes(1)], return_tensors=None)["input_ids"][0]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    learned = [
        t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab != IGNORE_INDEX
    ]
    assert proc.tokenizer.decode(learned).strip() == "ok<|im_end|>"
    own = [{"role": "system", "content": "Be brief."}, *qa[:1]]
    assert proc.apply_chat_template(own, [codes(1)]).count("<|im_start|>system") == 1
    assert "Be brief." in proc.apply_chat_template(own, [codes(1)])
    proc.save_pretrained(tmp_path)
    again = FmriLMProcessor.from_pretrained(tmp_path)
    assert again.apply_chat_template(qa[:1], [codes(1)]) == prompt
    proc.config.system_prompt = None
    assert proc.apply_chat_template(qa[:1], [codes(1)]).startswith("<|im_start|>user\n")
