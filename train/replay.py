"""A small built-in text -> text replay set for Stages 2 and 3, so the LLM keeps answering plain questions.

While LoRA learns brain tokens (Stage 2) or phenotype answers (Stage 3), a share of every batch is ordinary
chat: general questions with short, correct answers written for this package (no download, no licence
question). Users can add their own pairs with ``--replay-file`` (JSON lines with "prompt" and "response").
Stage 3 can also replace the written answers by the model's own (`own_answers`: what the LLM answered before
tuning), so replay holds the chat model where it was instead of teaching it the written answers' style.

No prompt here is one of `fmrilm bench retention`'s questions, so that benchmark never scores a trained answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

REPLAY_PAIRS: tuple[tuple[str, str], ...] = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What is 12 plus 7?", "12 plus 7 equals 19."),
    ("Name the largest planet in the solar system.", "Jupiter is the largest planet in the solar system."),
    (
        "What do plants need for photosynthesis?",
        "Plants need light, water and carbon dioxide for photosynthesis.",
    ),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    (
        "What does the heart do?",
        "The heart pumps blood through the body, carrying oxygen and nutrients to the organs.",
    ),
    (
        "Write one sentence about the ocean.",
        "The ocean covers most of the Earth's surface and is home to countless species.",
    ),
    ("What is the opposite of 'cold'?", "The opposite of 'cold' is 'hot'."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet'."),
    ("What is 9 times 6?", "9 times 6 equals 54."),
    (
        "Explain what a neuron is in one sentence.",
        "A neuron is a nerve cell that transmits information through electrical and chemical signals.",
    ),
    (
        "What is the main function of the lungs?",
        "The lungs take in oxygen and remove carbon dioxide from the blood.",
    ),
    (
        "Suggest a healthy breakfast.",
        "Oatmeal with fresh fruit and a handful of nuts makes a healthy breakfast.",
    ),
    ("What season comes after winter?", "Spring comes after winter."),
    (
        "Why do we have seasons?",
        "The Earth's axis is tilted, so through the year each hemisphere gets more or less direct sunlight.",
    ),
    ("Spell the word 'science' backwards.", "Backwards, 'science' is 'ecneics'."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    (
        "Summarize: The cat sat on the mat all afternoon and watched the birds.",
        "A cat spent the afternoon on a mat watching birds.",
    ),
    ("What language is mainly spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    (
        "Is a tomato a fruit or a vegetable?",
        "Botanically, a tomato is a fruit, although it is often cooked as a vegetable.",
    ),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    (
        "Give a short tip for better sleep.",
        "Keep a regular bedtime and avoid screens for an hour before sleeping.",
    ),
    (
        "What organ controls the body?",
        "The brain controls the body by processing information and sending signals through the nerves.",
    ),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Convert 2 kilometres to metres.", "2 kilometres are 2000 metres."),
    (
        "What is magnetic resonance imaging used for?",
        "Magnetic resonance imaging makes detailed pictures of organs and tissues without radiation.",
    ),
    ("Name three primary colours.", "Red, blue and yellow are the three traditional primary colours."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Hello! How are you?", "Hello! I am doing well, thank you. How can I help you today?"),
    (
        "Write a haiku about autumn.",
        "Red leaves drift and fall,\ncool wind whispers through bare trees,\nthe year breathes slowly.",
    ),
    ("What is 100 divided by 4?", "100 divided by 4 equals 25."),
    ("What gas do humans exhale?", "Humans exhale carbon dioxide."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level."),
)


def load_replay_pairs(path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """The built-in pairs, plus those of a JSON-lines file with "prompt" and "response" fields."""
    pairs = list(REPLAY_PAIRS)
    if path is None:
        return pairs
    path = Path(path)
    if not path.is_file():
        raise FmriInputError(
            "Replay file not found", file=path, fix="pass a JSON-lines file of prompt/response pairs"
        )
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["prompt"]), str(row["response"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FmriInputError(
                f"Line {n} is not a JSON object with 'prompt' and 'response' ({exc})",
                file=path,
                fix='write one {"prompt": ..., "response": ...} object per line',
            ) from exc
    return pairs


#: Where an unfinished answer may be cut so it still ends as a sentence.
SENTENCE_ENDS = (".", "!", "?")


def own_answers(model: Any, prompts: list[str], max_new_tokens: int = 128) -> list[str | None]:
    """The answers the model's LLM gives to ``prompts`` before tuning: greedy, in its chat template, with its
    adapters switched off (so a Stage-2 model answers as its base LLM) and brain tokens excluded (as the chat
    generates). An answer still running at ``max_new_tokens`` is cut after its last full sentence; None when
    it has none (the pair is then left out)."""
    import contextlib

    import torch

    from fmrilm.chat import text_only_kwargs

    processor, llm = model.processor, model.llm
    eos = model.base_llm.generation_config.eos_token_id
    eos = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
    was_training = llm.training
    llm.eval()
    off = llm.disable_adapter() if model.has_adapters else contextlib.nullcontext()
    answers: list[str | None] = []
    try:
        with off, torch.no_grad():
            for prompt in prompts:
                inputs = processor([{"role": "user", "content": prompt}], add_generation_prompt=True)
                ids = inputs["input_ids"].to(model.device)
                out = model.generate(
                    **text_only_kwargs(processor, {}),
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                )
                new = out[0, ids.shape[1] :].tolist()
                finished = len(new) < max_new_tokens or new[-1] in eos
                answers.append(whole_sentences(processor.decode(new), finished))
    finally:
        llm.train(was_training)
    return answers


def whole_sentences(text: str, finished: bool) -> str | None:
    """An answer as a replay target: as it is when the model finished it, else up to its last full sentence
    (a target cut mid-sentence would teach the model to stop there); None when nothing is left."""
    text = text.strip()
    if not finished:
        cut = max(text.rfind(end) for end in SENTENCE_ENDS)
        text = text[: cut + 1].strip() if cut > 0 else ""
    return text or None
