"""The training loss that saves memory is the plain one: Stages 2 and 3 and `finetune` call
``FmriLM(..., loss_reduction="example")``, which runs the output layer only where a label is learned. Its loss and
its gradients (LoRA, trainable brain-token rows, soft-token projection) equal transformers' own full-logits loss
of each example on its own, averaged over the examples that have an answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm.atlas import Atlas
from fmrilm.model.adapters import LoraSettings
from fmrilm.model.modeling import FmriLM
from fmrilm.model.processing import IGNORE_INDEX
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def scans(n: int) -> list[Scan]:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(12, 3)) * 30
    atlas = Atlas(name="toy12", labels=[f"r{i}" for i in range(12)], coords=coords, networks=["A"] * 12)
    out = []
    for i in range(n):
        ts = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 12)) + 0.5 * rng.standard_normal((40, 12))
        out.append(Scan(ts.astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"sub{i}"))
    return out


def model_and_examples(arch: str) -> tuple[FmriLM, list[dict]]:
    """A tiny model with connectome (soft) tokens and LoRA, and four examples of different lengths: a long
    answer, a short one, a two-turn conversation, and one cut before its answer (no learned token)."""
    fitted = scans(10)
    connectome = ConnectomeTokenizer.fit(
        fitted, ConnectomeConfig(num_tokens=2, components=4, codebook_size=4, num_levels=1, quantizer_steps=3)
    )
    host = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    host.set_connectome(connectome)
    llm, tok = tiny_causal_lm(arch, initializer_range=0.3)
    model = FmriLM.from_base(llm, host, tokenizer=tok)
    model.add_adapters(LoraSettings(r=4, alpha=8, dropout=0.0))
    proc = model.processor
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking adapters and projection, so every gradient path is non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)

    def user(text: str) -> dict:
        return {"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": text}]}

    conversations = [
        [user("Describe."), {"role": "assistant", "content": "Default mode coupling is high; visual is typical."}],
        [user("Sex?"), {"role": "assistant", "content": "female"}],
        [user("Sex?"), {"role": "assistant", "content": "male"}, user("Sure?"), {"role": "assistant", "content": "yes"}],
    ]  # fmt: skip
    examples = [proc.training_example(c, [fitted[i]] * (1 + (i == 2))) for i, c in enumerate(conversations)]
    cut = dict(examples[0])
    first_label = next(i for i, x in enumerate(cut["labels"]) if x != IGNORE_INDEX)
    examples.append({k: v[:first_label] for k, v in cut.items()})  # truncated before its answer
    return model, examples


def gradients(model: FmriLM) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # tied and untied output layer
def test_answer_only_loss_and_its_gradients_equal_the_full_logits_loss(arch, monkeypatch):
    import fmrilm.model.modeling as modeling

    monkeypatch.setattr(modeling, "LOSS_CHUNK", 8)  # several chunks even at this size
    model, examples = model_and_examples(arch)
    model.eval()  # no dropout: both computations see the same network
    proc = model.processor
    head_rows: list[int] = []
    hook = model.llm.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )

    batch = proc.pad(examples)
    assert batch["connectome_values"].abs().sum() > 0  # soft tokens are in the inputs
    out = model(**batch, loss_reduction="example")
    learned = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    forward_rows = list(head_rows)
    out.loss.backward()
    hook.remove()
    # the output layer saw the learned positions only, 8 at a time, and again (recomputed) in the backward pass
    assert sum(forward_rows) == learned > 16 and max(forward_rows) <= 8
    assert sum(head_rows) == 2 * learned and max(head_rows) <= 8
    ours = gradients(model)

    # plain: transformers' own loss (full logits over every position) of each answered example alone, averaged
    singles = [model(**proc.pad([e])) for e in examples[:3]]
    assert all(s.logits.shape[1] == len(e["input_ids"]) for s, e in zip(singles, examples, strict=False))
    plain = torch.stack([s.loss for s in singles]).mean()
    plain.backward()
    reference = gradients(model)

    torch.testing.assert_close(out.loss, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.example_losses[:3], torch.stack([s.loss for s in singles]).detach())
    assert out.example_losses[3] == 0  # the example without an answer adds nothing
    assert ours.keys() == reference.keys()
    kinds = {"lora_A", "lora_B", "soft_projection", "trainable_tokens"}
    assert {k for k in kinds if any(k in name for name in ours)} == kinds, sorted(ours)
    for name, grad in reference.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_is_on_by_default_for_long_sequences_and_the_flags_decide():
    from fmrilm.train.common import CHECKPOINTING_FROM_TOKENS, checkpointing_wanted, loop_kwargs

    from fmrilm.cli import build_parser

    assert checkpointing_wanted(None, CHECKPOINTING_FROM_TOKENS) and checkpointing_wanted(None, 8 * 218)
    assert not checkpointing_wanted(None, CHECKPOINTING_FROM_TOKENS - 1) and not checkpointing_wanted(
        None, 2 * 60
    )
    assert not checkpointing_wanted(False, 4096) and checkpointing_wanted(True, 8)
    parser = build_parser("train")
    align = ["train", "align", "--cohort", "c", "--tokenizer", "t", "--out", "o"]
    for flags, expected in (
        ([], None),
        (["--gradient-checkpointing"], True),
        (["--no-gradient-checkpointing"], False),
    ):
        assert loop_kwargs(parser.parse_args([*align, *flags]))["gradient_checkpointing"] is expected
