"""Scale-out: Stage 2, Stage 3 and `fmrilm finetune` launched as two CPU processes by `accelerate launch` (DDP over
gloo) reach the losses of one process with the same global batch, and write one model, from the main process.

Each process takes half of every global batch; DDP averages the two halves' gradients. The two runs differ only
in float32 rounding: each half is padded to its own longest example and the gradients are summed over processes
before averaging. So every logged loss (train, per task, held-out) agrees to ``RTOL`` and the trained tensors to
``ATOL`` (measured: 2e-7 relative and 6e-6 absolute, after 3 AdamW steps of 1e-2); LoRA dropout is 0, since each
process draws its own dropout masks. Three steps, so a schedule stepped once per process (accelerate's default)
shows at step 3; connectome tokens, so a share of a batch without a scan leaves the soft-token projection out of
one process's graph (DDP then waits forever unless every trainable tensor takes part).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fmrilm.atlas import Atlas
from fmrilm.cli import main as cli_main
from fmrilm.cohort import Cohort
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan
from fmrilm.splits import save_split
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

K, CODEBOOK, N = 4, 16, 8
SMALL = ConnectomeConfig(num_tokens=2, components=4, codebook_size=8, num_levels=2, quantizer_steps=20)
#: One process against two: float32 rounding only (padding lengths, the gradient all-reduce).
RTOL, ATOL = 1e-4, 1e-4
DRIVER = Path(__file__).with_name("accelerate_driver.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny cohort (8 subjects, phenotypes, a train/val/test split), its descriptor corpus and instruction set,
    a tiny fMRI tokenizer and base LLM (Stage 2) and a tiny saved fmrilm model (Stage 3, finetune)."""
    import datasets

    root = tmp_path_factory.mktemp("scale_out")
    rng = np.random.default_rng(0)
    atlas = Atlas.builtin("dosenbach160").subset(np.arange(12))
    scans = [
        Scan(rng.normal(size=(48, 12)).astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"p{i}")
        for i in range(N)
    ]  # fmt: skip
    pheno = [{"sex": "male" if i % 2 else "female"} for i in range(N)]
    Cohort.from_scans(scans, pheno, atlas=atlas, name="toy").save(root / "cohort")
    save_split(root / "cohort", "s", {"train": [0, 1, 2, 3, 4, 5], "val": [6], "test": [7]}, kind="manual")
    texts = [
        {"scan_id": s.scan_id, "window": w, "text": f"Window {w} of {s.scan_id}: coupling is {'high' if w else 'low'}."}
        for s in scans
        for w in range(-1, 3)  # -1: the whole scan
    ]  # fmt: skip
    datasets.Dataset.from_list(texts).save_to_disk(str(root / "corpus"))
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    # connectome tokens: whole-scan examples read soft tokens, so a share of a batch holding none (Stage 2's
    # text replay, forecasting) leaves the soft-token projection out of that process's graph
    fmri_tok.set_connectome(ConnectomeTokenizer.fit(scans, SMALL))
    fmri_tok.save_pretrained(root / "tokenizer")
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).save_pretrained(root / "base")
    build = ["instructions", "build", str(root / "cohort"), "--tasks", "sex", "--split", "s"]
    assert cli_main([*build, "--paradigms", "brain", "--out", str(root / "instr")]) == 0
    return root


def commands(root: Path, out: Path) -> list[list[str]]:
    """Stage 2, Stage 3 and finetune, 3 steps each of a global batch of 4, every step logged."""
    loop = ["--steps", "3", "--batch-size", "4", "--log-every", "1", "--save-every", "3", "--eval-every", "3"]
    loop += ["--lr", "1e-2", "--warmup-steps", "0", "--lora-r", "4", "--lora-dropout", "0", "--no-progress"]
    return [
        ["train", "align", "--cohort", str(root / "cohort"), "--corpus", str(root / "corpus"),
         "--tokenizer", str(root / "tokenizer"), "--base", str(root / "llm"), "--val-fraction", "0.25",
         "--out", str(out / "align"), *loop],
        ["train", "instruct", "--model", str(root / "base"), "--instructions", str(root / "instr"),
         "--out", str(out / "instruct"), *loop],
        ["finetune", "--model", str(root / "base"), "--cohort", str(root / "cohort"), "--task", "sex",
         "--split", "s", "--out", str(out / "finetune"), *loop],
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(root: Path, out: Path) -> subprocess.CompletedProcess:
    out.mkdir()
    (out / "commands.json").write_text(json.dumps(commands(root, out)))
    # accelerate's `--cpu --num_processes 2` starts two processes only through MPI; its torchrun launcher
    # (`--multi_gpu`) starts them without, and ACCELERATE_USE_CPU keeps them on the CPU (DDP over gloo).
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    cmd = [*launch, str(DRIVER), str(out / "commands.json"), str(out / "saves.log")]
    # its own session, so a hung run (a DDP collective one process never reaches) is ended with its workers
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"the two-process run did not finish in 240 s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def trained_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "adapter_model.safetensors").exists():  # finetune: the adapters alone
        return load_file(str(folder / "adapter_model.safetensors"))
    return load_file(str(folder / "model" / "adapters" / "adapter_model.safetensors"))


@pytest.mark.slow  # about 45 s on 2 cores: two processes import torch, transformers and peft
def test_two_processes_reach_the_losses_of_one_and_save_one_model(inputs, tmp_path):
    one = tmp_path / "one"
    for argv in commands(inputs, one):
        assert cli_main(argv) == 0
    two = tmp_path / "two"
    result = launch_two(inputs, two)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count(" written to ") == 3, (
        result.stdout
    )  # each run reported once, by the main process

    for run in ("align", "instruct", "finetune"):
        m1 = json.loads((one / run / "metrics.json").read_text())
        m2 = json.loads((two / run / "metrics.json").read_text())
        assert m2["setup"]["processes"] == 2 and m1["setup"]["processes"] == 1
        assert [e["step"] for e in m2["train"]] == [e["step"] for e in m1["train"]] == [1, 2, 3]
        for e1, e2 in zip(m1["train"], m2["train"], strict=True):
            losses = sorted(k for k in e1 if k.startswith("loss_"))
            assert sorted(k for k in e2 if k.startswith("loss_")) == losses, run
            for key in losses:
                assert e2[key] == pytest.approx(e1[key], rel=RTOL), (run, e1["step"], key)
        for e1, e2 in zip(m1.get("val", []), m2.get("val", []), strict=True):  # sharded held-out losses
            assert {k: pytest.approx(v, rel=RTOL) for k, v in e1.items()} == e2, run
        t1, t2 = trained_tensors(one / run), trained_tensors(two / run)
        assert t1.keys() == t2.keys() and t1, run
        for name in t1:
            torch.testing.assert_close(t2[name], t1[name], rtol=0, atol=ATOL, msg=f"{run}: {name}")
        # the same files as one process wrote: no second model, no half-written temporary folder
        assert sorted(p.name for p in (two / run).iterdir()) == sorted(p.name for p in (one / run).iterdir())
    assert json.loads((two / "align" / "metrics.json").read_text())["val"], (
        "Stage 2 evaluated held-out subjects"
    )
    assert json.loads((two / "instruct" / "metrics.json").read_text())["val"], (
        "Stage 3 evaluated its val rows"
    )

    saves = (two / "saves.log").read_text().split("\n")[:-1]
    assert saves == [
        f"0 {two / 'align' / 'model'}",
        f"0 {two / 'instruct' / 'model'}",
        f"0 {two / 'finetune'}",
    ], "each run saves its model once, from the main process"
    model = FmriLM.from_pretrained(two / "instruct" / "model")
    assert model.has_adapters
