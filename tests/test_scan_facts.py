"""Scan facts: the line a prompt carries after a whole scan's tokens names the pair the corpus's answer names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmrilm.atlas import Atlas
from fmrilm.descriptors import FeatureConfig, ReferenceStats, humanize_network
from fmrilm.descriptors.facts import FACTS_PREFIX, CouplingFacts
from fmrilm.model.processing import FmriLMProcessor, FmriProcessorConfig
from fmrilm.model.testing import random_scan, tiny_text_tokenizer
from fmrilm.scan import Scan

NETS = ["Visual"] * 6 + ["DefaultMode"] * 7 + ["FrontoParietal"] * 5 + ["Salience"] * 4


def toy_atlas(order: np.ndarray | None = None) -> Atlas:
    rng = np.random.default_rng(1)
    labels = [f"r{i}" for i in range(len(NETS))]
    coords = rng.uniform(-60, 60, (len(NETS), 3))
    order = np.arange(len(NETS)) if order is None else order
    return Atlas(
        name="toy", labels=[labels[i] for i in order], coords=coords[order], networks=[NETS[i] for i in order]
    )


def network_scan(seed: int, couple: tuple[str, str] | None = None, n_time: int = 160) -> Scan:
    """Each region = its network's signal + noise; ``couple`` gives two networks a shared extra signal."""
    rng = np.random.default_rng(seed)
    latent = {n: rng.standard_normal(n_time) for n in dict.fromkeys(NETS)}
    shared = rng.standard_normal(n_time)
    ts = []
    for n in NETS:
        extra = 1.5 * shared if couple and n in couple else 0.0
        ts.append(0.8 * latent[n] + extra + rng.standard_normal(n_time))
    return Scan(np.stack(ts, axis=1).astype(np.float32), tr=2.0, atlas=toy_atlas(), scan_id=f"s{seed}")


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    scans = [network_scan(i) for i in range(8)]
    return ReferenceStats.fit(scans, feature_config=FeatureConfig(n_components=3), progress=False, seed=0)


def corpus_answer(reference: ReferenceStats, scan: Scan) -> str:
    """What the coupled_pair instruction rows answer: argmax of the whole-scan fc.between z values."""
    (descriptor,) = reference.describe(scan, unit="scan")
    between = {
        n: float(z)
        for n, z in zip(reference.feature_names, descriptor.z, strict=True)
        if n.startswith("fc.between.")
    }
    a, b = max(between, key=between.get)[len("fc.between.") :].split("~")
    return f"{humanize_network(a)} and {humanize_network(b)}"


def test_the_facts_name_the_planted_pair_and_the_corpus_answer(reference):
    facts = CouplingFacts(reference)
    planted = network_scan(100, couple=("Visual", "Salience"))
    assert facts.text(planted) == f"{FACTS_PREFIX} visual and salience."
    for seed in range(101, 109):  # unplanted scans: whichever pair is highest, the corpus names the same
        scan = network_scan(seed)
        assert facts.text(scan) == f"{FACTS_PREFIX} {corpus_answer(reference, scan)}."


def test_region_order_does_not_change_the_facts(reference):
    facts = CouplingFacts(reference)
    scan = network_scan(100, couple=("DefaultMode", "FrontoParietal"))
    order = np.random.default_rng(3).permutation(len(NETS))
    shuffled = Scan(scan.timeseries[:, order], tr=2.0, atlas=toy_atlas(order), scan_id="shuffled")
    assert facts.matches(shuffled)
    assert facts.text(shuffled) == facts.text(scan) == f"{FACTS_PREFIX} default-mode and fronto-parietal."


def facts_processor(reference: ReferenceStats | None, on: bool = True) -> FmriLMProcessor:
    config = FmriProcessorConfig(codebook_size=16, num_latents=4, scan_facts=on)
    if reference is not None:
        config.descriptor_references = [reference.to_dict()]
    return FmriLMProcessor(tiny_text_tokenizer("chatml"), None, config)


def ask(processor: FmriLMProcessor, part: dict) -> str:
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Which pair?"}]}]
    return processor.apply_chat_template(messages)


def test_a_whole_scan_part_ends_with_its_facts_only_where_the_model_states_them(reference, tmp_path):
    scan = network_scan(100, couple=("Visual", "Salience"))
    codes = np.zeros((1, 4), dtype=np.int64)
    line = f"{FACTS_PREFIX} visual and salience."
    with_facts = ask(facts_processor(reference), {"type": "fmri", "scan": scan, "codes": codes})
    assert f"<brain_end>\n{line}\nWhich pair?" in with_facts
    # off, or a scan of an atlas the model has no reference for, or codes alone: the prompt has no line
    assert FACTS_PREFIX not in ask(facts_processor(reference, on=False), {"type": "fmri", "codes": codes})
    other = random_scan(64)  # Dosenbach-160: no reference stored
    assert facts_processor(reference).scan_facts(other) == ""
    assert FACTS_PREFIX not in ask(facts_processor(None), {"type": "fmri", "scan": scan, "codes": codes})
    # saved with the model: a reloaded processor states the same line
    processor = facts_processor(reference)
    processor.save_pretrained(tmp_path)
    again = FmriLMProcessor.from_pretrained(tmp_path)
    assert again.scan_facts(scan) == line


def test_stored_facts_stay_text(reference):
    """A chat history's stored facts are only words: brain-token strings in them never become brain tokens."""
    processor = facts_processor(reference)
    part = {"type": "fmri", "codes": np.zeros((1, 4), dtype=np.int64), "facts": "<brain_3> and <brain_end>"}
    ids = processor([[{"role": "user", "content": [part]}]], return_tensors=None)["input_ids"][0]
    assert ids.count(processor.ids.start_id) == ids.count(processor.ids.end_id) == 1
    lo = processor.ids.first_code_id
    assert sum(lo <= i < lo + 16 for i in ids) == 4  # the part's own 4 codes, none from the facts


def test_stage3_stores_each_instruction_sets_reference_and_replaces_one_of_the_same_atlas(
    reference, tmp_path
):
    from fmrilm.train.stage3 import InstructionSource, store_fact_references

    from fmrilm.errors import FmriInputError

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    reference.save(corpus / "reference.json")
    source = InstructionSource(tmp_path, None, {"descriptors": str(corpus)}, {}, None)
    config = FmriProcessorConfig(descriptor_references=[{"atlas": {"name": "toy"}, "stale": True}])
    store_fact_references(config, [source])
    assert config.descriptor_references == [json.loads((corpus / "reference.json").read_text())]
    missing = InstructionSource(tmp_path, None, {"descriptors": str(tmp_path / "gone")}, {}, None)
    with pytest.raises(FmriInputError, match="gone.*not found"):
        store_fact_references(config, [missing])


def test_stage3_examples_carry_each_scans_stored_facts(reference):
    """Stage 3 computes each scan's facts once (with its codes) and every whole-scan row of it carries them."""
    from fmrilm.train.stage3 import EncodedScans, resolve_messages

    processor = facts_processor(reference)
    codes = EncodedScans({"s1": np.zeros((1, 4), dtype=np.int64), "s2": np.ones((1, 4), dtype=np.int64)})
    codes.facts = {"s1": f"{FACTS_PREFIX} visual and salience.", "s2": ""}
    row = [
        {"role": "user", "content": [{"type": "fmri", "scan_id": "s1"}, {"type": "text", "text": "Pair?"}]},
        {"role": "assistant", "content": "visual and salience"},
    ]
    example = processor.training_example(resolve_messages(row, codes))
    assert f"<brain_end>\n{FACTS_PREFIX} visual and salience.\nPair?" in processor.tokenizer.decode(
        example["input_ids"]
    )
    row[0]["content"][0]["scan_id"] = "s2"  # a scan without a between-network pair: no line at all
    example = processor.training_example(resolve_messages(row, codes))
    assert "<brain_end>\nPair?" in processor.tokenizer.decode(example["input_ids"])
