"""Run README.md's code blocks at toy size (Sybil; wired in by the repository's root ``conftest.py``).

The README is one document: its blocks run in order, in one temporary folder, sharing one Python namespace, as a
reader who followed it from the top would run them. TESTING.md ("The README is tested") states the rules:

- the folder holds, under the names the README uses, small stand-ins for the reader's own files (a participants
  table with scan files, ABIDE-format files, a trained model in ``demo_out/stage3_instruct/model``);
- the offline default base model (SmolLM2) is a tiny random Llama: ``$FMRILM_CACHE`` points at a folder where
  the default's converted copy is that tiny model, so ``--base``/``--llm`` defaults and ``smollm2`` load it;
- ``fmrilm ...`` lines run in this process through ``fmrilm.cli.main`` with the toy-size rules of
  `toy_argv` (sizes such as ``--steps`` cut, toy flags added); any other command fails the test;
- Python blocks run as written, except the size rules of `toy_python` (``n_subjects=N`` at most 24);
- a block that cannot run here is preceded by ``<!-- skip: next "why" -->`` in the README source.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: Flags whose value is cut to a toy size: (subcommand prefix, flag) -> function of the written value.
TOY_VALUES: dict[tuple[tuple[str, ...], str], Any] = {
    ((), "--steps"): lambda v: "2",
    ((), "--full-steps"): lambda v: "2",
    ((), "--seeds"): lambda v: "1",
    ((), "--subjects"): lambda v: str(min(int(v), 24)),
    (("eval",), "--shots"): lambda v: ",".join(v.split(",")[:2]),  # zero-shot and the first k
}
#: Flags added to a subcommand when the README line does not give them.
TOY_FLAGS: dict[tuple[str, ...], list[str]] = {
    ("simulate",): ["--atlas", "toy_atlas_centroids.csv"],  # 24 regions instead of Dosenbach's 160
    ("train", "tokenizer"): [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--connectome-tokens",
        "4",
        "--connectome-levels",
        "2",
    ],
    ("train", "align"): ["--steps", "2", "--max-length", "160"],
    ("train", "instruct"): ["--steps", "2"],
    ("finetune",): ["--steps", "2"],
    ("eval",): ["--steps", "2", "--n-boot", "20", "--no-tangent"],
}
#: Python blocks: ``n_subjects=N`` at most 24, and simulated cohorts on the 24-region toy atlas.
TOY_PYTHON = [
    (
        re.compile(r"\bn_subjects=(\d+)"),
        lambda m: f"n_subjects={min(int(m.group(1)), 24)}, atlas='toy_atlas_centroids.csv'",
    ),
]
N_SUBJECTS = 24  # subjects of each stand-in cohort (8-shot fine-tuning needs 8 per class in a train part)


# ------------------------------------------------------------------------------------------------ toy sizes
def toy_argv(argv: list[str]) -> list[str]:
    """A README command line (``argv`` without the leading ``fmrilm``) at toy size."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        for (command, flag), cut in TOY_VALUES.items():
            if arg == flag and tuple(out[: len(command)]) == command:
                out[i + 1] = cut(out[i + 1])
    for command, flags in TOY_FLAGS.items():
        if tuple(out[: len(command)]) == command:
            for j in range(0, len(flags), 2):
                if flags[j] not in out:
                    out += flags[j : j + 2]
    return out


def toy_python(source: str) -> str:
    for pattern, replace in TOY_PYTHON:
        source = pattern.sub(replace, source)
    return source


def shell_commands(source: str) -> Iterable[list[str]]:
    """The commands of a bash block: backslash-continued lines joined, comments dropped, split as a shell would."""
    text = re.sub(r"\\\n", " ", source)
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            yield argv


# ------------------------------------------------------------------------------------------------ evaluators
def run_bash_block(example: Any) -> None:
    """Each ``fmrilm ...`` line of the block must exit 0; any other command fails (mark the block skipped)."""
    from fmrilm.cli import main

    for argv in shell_commands(str(example.parsed)):
        if argv[0] != "fmrilm":
            raise AssertionError(
                f"README line {example.line}: the README test runs only `fmrilm ...` commands, not "
                f'`{shlex.join(argv)}`; put `<!-- skip: next "why" -->` before the block if it cannot run'
            )
        toy = toy_argv(argv[1:])
        print(f"$ fmrilm {shlex.join(toy)}", flush=True)
        try:
            code = main(toy)
        except SystemExit as exc:  # argparse errors
            code = exc.code
        if code not in (0, None):
            raise AssertionError(
                f"README line {example.line}: `{shlex.join(argv)}` exited {code} "
                f"(run at toy size as `fmrilm {shlex.join(toy)}`)"
            )


def run_python_block(example: Any) -> None:
    """Exec the block (toy sizes) in the document's namespace, with README line numbers in tracebacks."""
    __tracebackhide__ = True
    source = toy_python(str(example.parsed))
    code = compile("\n" * (example.line + example.parsed.line_offset) + source, example.path, "exec")
    exec(code, example.namespace)
    example.namespace.pop("__builtins__", None)


def refuse_other_fences(example: Any) -> None:
    raise AssertionError(
        f"README line {example.line}: a ```{example.parsed} block, which the README test cannot run; "
        'use ```bash or ```python, or put `<!-- skip: next "why" -->` before it'
    )


def sybil() -> Any:
    """The Sybil instance for README.md."""
    from sybil import Region, Sybil
    from sybil.parsers.markdown import CodeBlockParser, SkipParser
    from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

    def other_fences(document):
        for region in FencedCodeBlockLexer(language=r"[^\n]*")(document):
            language = region.lexemes["language"].strip()
            if language not in ("bash", "python"):
                yield Region(region.start, region.end, language or "(no language)", refuse_other_fences)

    return Sybil(
        parsers=[
            SkipParser(),
            CodeBlockParser(language="python", evaluator=run_python_block),
            CodeBlockParser(language="bash", evaluator=run_bash_block),
            other_fences,
        ],
        path=str(Path(__file__).resolve().parents[1]),  # the repository: its README.md only
        patterns=["README.md"],
        excludes=["*/README.md"],
        fixtures=["readme_workspace"],
    )


# ------------------------------------------------------------------------------------------------ stand-ins
def stand_in_atlas():
    """24 regions at Dosenbach-160 centroids spread over its networks (so "default mode" has regions)."""
    from fmrilm.atlas import Atlas

    full = Atlas.builtin("dosenbach160")
    return full.subset(np.linspace(0, full.n_regions - 1, 24).round().astype(int))


def structured_timeseries(rng: np.random.Generator, n_timepoints: int, n_regions: int) -> np.ndarray:
    """A few shared sources with subject-specific loadings plus noise: real FC structure, float32."""
    sources = rng.standard_normal((n_timepoints, 4))
    loadings = rng.standard_normal((4, n_regions))
    return (sources @ loadings + 0.5 * rng.standard_normal((n_timepoints, n_regions))).astype(np.float32)


def write_stand_ins(root: Path) -> None:
    """The reader's own files the README names, small: scans, atlases, tables, ABIDE-format files."""
    import pandas as pd

    rng = np.random.default_rng(0)
    atlas = stand_in_atlas()
    xyz = np.round(atlas.coords, 1)
    # the README's single scans and their centroids table (ABIDE's cc200 layout: roi, volume_voxels, x, y, z)
    pd.DataFrame(
        {"roi": np.arange(1, 25), "volume_voxels": 100, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    ).to_csv(root / "cc200_centroids.csv", index=False)
    pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "label": atlas.labels}).to_csv(
        root / "toy_atlas_centroids.csv", index=False
    )
    for name in ("sub-01_rois_cc200.1D", "sub-01.1D"):
        np.savetxt(root / name, structured_timeseries(rng, 80, 24), fmt="%.5f")
    # ABIDE's release layout: phenotypes.csv + one float16 array per FILE_ID in timeseries_cc200.npz
    rows, arrays = [], {}
    for i in range(N_SUBJECTS):
        site = ("PITT", "NYU")[i % 2]
        file_id = f"{site.title()}_{50000 + i:07d}"
        rows.append(
            {"FILE_ID": file_id, "SUB_ID": 50000 + i, "SITE_ID": site, "DX_GROUP": 1 + (i // 2) % 2,
             "AGE_AT_SCAN": round(float(rng.uniform(8, 40)), 2), "SEX": 1 + (i % 3 == 0), "FIQ": 100.0,
             "func_mean_fd": 0.1, "TR": (2.0, 1.5)[i % 2]}
        )  # fmt: skip
        arrays[file_id] = structured_timeseries(rng, 70, 24).astype(np.float16)
    pd.DataFrame(rows).to_csv(root / "phenotypes.csv", index=False)
    np.savez(root / "timeseries_cc200.npz", **arrays)
    # a lab's own cohort: participants.tsv, one region table per participant, a Schaefer-like centroids table
    pd.DataFrame(
        {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "label": [f"parcel_{i}" for i in range(24)]}
    ).to_csv(root / "schaefer_centroids.csv", index=False)
    (root / "derivatives").mkdir()
    participants = []
    for i in range(N_SUBJECTS):
        pid = f"sub-{i + 1:02d}"
        participants.append({"participant_id": pid, "age": 20 + i, "group": 1 + i % 2})
        table = pd.DataFrame(structured_timeseries(rng, 70, 24), columns=[f"parcel_{r}" for r in range(24)])
        table.to_csv(
            root / "derivatives" / f"{pid}_timeseries.tsv", sep="\t", index=False, float_format="%.5f"
        )
    pd.DataFrame(participants).to_csv(root / "participants.tsv", sep="\t", index=False)


def write_tiny_default_base(cache: Path) -> None:
    """Make ``cache`` (used as ``$FMRILM_CACHE``) resolve the default base model to a tiny random Llama."""
    from fmrilm.model.base_model import converted_gguf_dir, default_gguf_path
    from fmrilm.model.testing import tiny_causal_lm

    target = converted_gguf_dir(default_gguf_path(), cache)
    llm, tokenizer = tiny_causal_lm("llama", initializer_range=0.3)
    llm.save_pretrained(target)
    tokenizer.save_pretrained(target)


def write_demo_model(path: Path) -> None:
    """A Stage-3-like model (tiny LLM, tiny fMRI tokenizer with connectome tokens) that knows the README's
    tasks: ``diagnosis`` (patient / control) and ``diagnosis@abide`` (autism / control)."""
    import torch
    from fmrilm.instructions.spec import load_task

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import TaskCard, store_tasks
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
    from fmrilm.scan import Scan
    from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

    rng = np.random.default_rng(1)
    atlas = stand_in_atlas()
    scans = [
        Scan(structured_timeseries(rng, 80, 24), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"sub-s{i}")
        for i in range(14)
    ]
    connectome = ConnectomeTokenizer.fit(
        scans, ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)
    )
    fmri_tokenizer = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    fmri_tokenizer.set_connectome(connectome)
    llm, tokenizer = tiny_causal_lm("llama", initializer_range=0.3)
    torch.manual_seed(0)
    model = FmriLM.from_base(llm, fmri_tokenizer, tokenizer=tokenizer)
    diagnosis = load_task("diagnosis")
    sim = TaskCard.from_spec(diagnosis, options=["control", "patient"])
    abide = TaskCard.from_spec(diagnosis, options=["autism", "control"])
    store_tasks(model, [sim, TaskCard.from_dict({**abide.to_dict(), "name": "diagnosis@abide"})])
    model.save_pretrained(path)
