"""Linear-probe warm start of the scan summary: Stage 3 starts where a linear model of the scan already is.

A few passes of LoRA tuning read less of a scan than logistic regression on the same numbers (BENCHMARKS.md,
"Does the LLM read the scan?"), and fine-tuning from a fitted linear head keeps more, out of distribution too,
than fine-tuning from a random one (Kumar et al. 2022, "LP-FT"). Here the head lives inside the LLaVA
interface, so the model stays one LLM that reads its input embeddings:

1. for each two-answer task, logistic regression on the training scans' summary components (the numbers the
   start marker's projection reads; C by site-grouped inner CV) gives a direction ``w`` in component space;
2. the gradient of the answer margin ``log p(second option) - log p(first)`` with respect to the start
   marker's input embedding, averaged over training prompts, gives ``g``: the embedding direction the LLM
   already turns into that answer;
3. each probe is rescaled so its logits spread over the training scans by ``PROBE_LOGIT_SD`` (a strongly
   regularized probe ranks scans well but its raw logits barely move), and the summary projection gains
   ``D M W``: ``D = G (G^T G + ridge)^-1`` (one column per task, so each task's margin moves with its own probe
   and, to first order, little with the others'), ``M`` a task-by-task mixing set by up to two Newton steps on
   the measured response of every task's margin to every probe's logit on training prompts, so the margins
   would move one-for-one with the probes. Each column of ``M`` is bounded (``SCALE_BOUNDS``), and on the
   SmolLM2 demo the bound is what stops it: the margins move by 0.04-0.2 per unit of (rescaled) logit. The
   calibrated start follows the probe less closely than the first-order step alone, yet the tuned model ends
   better from it (BENCHMARKS.md, "The warm start's calibration, and the warm start without it").

Labels come from training rows only; nothing about held-out scans is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError

logger = logging.getLogger(__name__)

#: logistic regression's C grid (inverse L2 strength) for the probe, chosen by site-grouped inner CV
PROBE_CS = tuple(np.logspace(-4, 1, 8))
#: training prompts per task for the margin gradient and for the calibration of its scale
GRADIENT_PROMPTS = 16
CALIBRATION_PROMPTS = 48
#: bounds of the per-task rescaling (how far past the first-order step the projection may go)
SCALE_BOUNDS = (0.5, 20.0)  # of the scale's absolute value
#: SD of a probe's logits over the training scans after rescaling: cross-validated probes can be so strongly
#: regularized that their logits barely spread (autism on a validation fold: SD 0.024), while the Stage-2 model
#: already moves an answer's log-odds by an SD of about 4 between scans; at 8 the warm start alone lifted the
#: autism answer's AUC there from 0.48 to 0.61 (BENCHMARKS.md)
PROBE_LOGIT_SD = 8.0
#: ridge on the task gradients' Gram matrix, relative to its mean diagonal
RIDGE = 0.1
#: rescaling rounds at most (each one scores the calibration prompts once per task)
CALIBRATION_ROUNDS = 2
#: fewer training scans than this for a task: no probe for it (the fit would be noise)
MIN_SCANS = 10


@dataclass
class ProbeTask:
    """One two-answer task's probe: ``options`` (the margin is option 1 over option 0), ``weights`` over the
    summary components, the CV-chosen ``C``, and how the warm start moved the margin (``slope``)."""

    name: str
    options: tuple[str, str]
    weights: np.ndarray
    C: float
    n_scans: int
    scale: float = 1.0
    slope: float = float("nan")

    def summary(self) -> dict[str, Any]:
        """What a run records (metrics.json): the probe's size, strength and how the margin followed it."""
        return {
            "task": self.name,
            "options": list(self.options),
            "scans": self.n_scans,
            "C": self.C,
            "weight_norm": float(np.linalg.norm(self.weights)),
            "scale": self.scale,
            "margin_per_logit": self.slope,
        }


def two_answer_tasks(cards: Sequence[Any]) -> list[Any]:
    """Task cards whose answer is one of exactly two options (autism or not, modularity higher or lower)."""
    return [c for c in cards if c.type != "regression" and len(getattr(c, "options", ()) or ()) == 2]


def fit_probe(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights over ``components`` of L2 logistic regression (balanced classes, C by grouped CV) and its C.

    The components are used as they are (no standardizing), so the weights apply to what the projection reads.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise FmriInputError(
            f"A probe needs at least 2 training scans per answer, got {counts.tolist()}",
            fix="train on more labelled scans, or leave out --probe-init",
        )
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    if n_groups >= 3:
        splits = StratifiedGroupKFold(n_splits=min(5, n_groups), shuffle=True, random_state=seed)
        cv = list(splits.split(components, y, groups))
    else:
        cv = list(
            StratifiedKFold(min(5, int(counts.min())), shuffle=True, random_state=seed).split(components, y)
        )
    model = LogisticRegressionCV(
        Cs=list(PROBE_CS),
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
        cv=cv,
        class_weight="balanced",
        scoring="roc_auc",
        max_iter=3000,
        random_state=seed,
    ).fit(components, y)
    return np.asarray(model.coef_[0], dtype=np.float64), float(np.ravel(model.C_)[0])


def _prompt_batch(processor: Any, messages: Sequence[list[dict[str, Any]]]) -> Any:
    """Left-padded prompts (user turns up to the answer) of resolved instruction messages."""
    prompts = []
    for conv in messages:
        first = next((i for i, m in enumerate(conv) if m["role"] == "assistant"), len(conv))
        prompts.append(list(conv[:first]))
    return processor(prompts, add_generation_prompt=True)


def answer_margins(
    model: Any, messages: Sequence[list[dict[str, Any]]], options: Sequence[str]
) -> np.ndarray:
    """``log p(options[1]) - log p(options[0])`` after each prompt (the scored answer, as `predict` reads it)."""
    import torch

    from fmrilm.model.scoring import answer_ids, option_logprobs

    processor = model.processor
    ids = [answer_ids(processor, o) for o in options]
    out = []
    with torch.no_grad():
        for start in range(0, len(messages), 16):
            batch = _prompt_batch(processor, messages[start : start + 16]).to(model.device)
            lp = option_logprobs(model.llm, batch, ids, processor.tokenizer.pad_token_id, model.embed_inputs)
            out.append((lp[:, 1] - lp[:, 0]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def margin_gradient(
    model: Any, messages: Sequence[list[dict[str, Any]]], options: Sequence[str]
) -> np.ndarray:
    """Mean gradient of the answer margin with respect to the start marker's input embedding ``(hidden,)``."""
    import torch

    from fmrilm.model.scoring import answer_ids

    processor = model.processor
    table = model.llm.get_input_embeddings()
    option_ids = [torch.as_tensor([answer_ids(processor, o)], device=model.device) for o in options]
    grads = []
    for conv in messages:
        prompt = _prompt_batch(processor, [conv]).to(model.device)
        ids = prompt["input_ids"]
        start = (ids[0] == processor.ids.start_id).nonzero()
        if len(start) == 0:
            continue
        with torch.no_grad():
            base = model.embed_inputs(ids, prompt.get("connectome_values"))
        x = base.detach().clone().requires_grad_(True)
        logps = []
        for oid in option_ids:
            full = torch.cat([x, table(oid).to(x.dtype)], dim=1)
            logits = model.llm(inputs_embeds=full).logits[0, ids.shape[1] - 1 : -1].float()
            logps.append(torch.log_softmax(logits, -1).gather(-1, oid[0][:, None]).sum())
        (grad,) = torch.autograd.grad(logps[1] - logps[0], x)
        grads.append(grad[0, int(start[0, 0])].float().cpu().numpy())
    if not grads:
        raise FmriInputError(
            "No training prompt has a scan summary (a start marker) to warm-start",
            fix="use a model with the scan summary on, or leave out --probe-init",
        )
    return np.mean(grads, axis=0)


def summary_components(values: Any, k: int) -> np.ndarray:
    """The first ``k`` components of one scan's connectome values: what the summary projection reads."""
    return np.asarray(values, dtype=np.float64).reshape(-1)[:k]


def warm_start_summary(
    model: Any,
    sources: Sequence[tuple[Sequence[dict[str, Any]], Any]],
    cards: Sequence[Any],
    *,
    seed: int = 0,
) -> list[ProbeTask]:
    """Add each two-answer task's probe to ``model``'s summary projection (in place); returns the probes.

    ``sources`` are ``(rows, codes)`` pairs: training instruction rows (``task``, ``scan_id``, ``answer``,
    ``messages``, ``site``) and their scans' encoded codes (`train.stage3.encode_scans`), whose connectome
    values hold the components. Only single-question rows are used, one per scan and task. The LLM is
    measured in eval mode and left in the mode it was in.
    """
    projection = getattr(model, "soft_projection", None)
    if projection is None or projection.summary is None:
        raise FmriInputError(
            "The probe warm start needs a model with a scan summary (soft tokens with scan_summary on)",
            fix="build the model with FmriLM.from_base(..., scan_summary=True), or leave out --probe-init",
        )
    was_training = model.llm.training
    model.llm.eval()  # gradients and margins of the model as it answers: no dropout
    try:
        return _warm_start(model, projection, sources, cards, seed)
    finally:
        model.llm.train(was_training)


def _warm_start(
    model: Any,
    projection: Any,
    sources: Sequence[tuple[Sequence[dict[str, Any]], Any]],
    cards: Any,
    seed: int,
) -> list[ProbeTask]:
    import torch
    from fmrilm.train.stage3 import resolve_messages

    k = projection.summary_components
    rng = np.random.default_rng(seed)
    probes, gradients, prompts_of = [], [], {}
    for card in two_answer_tasks(cards):
        chosen = []  # (row, codes of its source)
        for rows, codes in sources:
            connectome = getattr(codes, "connectome", {}) or {}
            seen: set[str] = set()
            for row in rows:
                sid = str(row["scan_id"])
                if row["task"] != card.name or sid in seen or sid not in connectome:
                    continue
                if (
                    str(row["answer"]) not in card.options
                    or sum(m["role"] == "assistant" for m in _msgs(row)) != 1
                ):
                    continue
                seen.add(sid)
                chosen.append((row, codes))
        if len(chosen) < MIN_SCANS:
            logger.info("probe warm start: %s skipped (%d training scans)", card.name, len(chosen))
            continue
        X = np.stack([summary_components(c.connectome[str(r["scan_id"])].values, k) for r, c in chosen])
        y = np.asarray([str(r["answer"]) == card.options[1] for r, _ in chosen], dtype=int)
        groups = np.asarray([str(r.get("site", "")) for r, _ in chosen])
        try:
            w, c = fit_probe(X, y, groups, seed)
        except FmriInputError as exc:
            logger.info("probe warm start: %s skipped (%s)", card.name, exc)
            continue
        spread = float(np.std(X @ w))
        if spread > 1e-12:  # the probe's ranking, at a spread that competes with the model's own log-odds
            w = w * (PROBE_LOGIT_SD / spread)
        messages = [resolve_messages(r["messages"], c) for r, c in chosen]
        order = rng.permutation(len(chosen))
        g = margin_gradient(model, [messages[i] for i in order[:GRADIENT_PROMPTS]], card.options)
        probes.append(ProbeTask(card.name, tuple(card.options), w, c, len(chosen)))
        gradients.append(g)
        prompts_of[card.name] = (
            [messages[i] for i in order[:CALIBRATION_PROMPTS]],
            X[order[:CALIBRATION_PROMPTS]],
        )
    if not probes:
        return []
    G = np.stack(gradients, axis=1)  # (hidden, tasks)
    gram = G.T @ G  # ridge: tasks the LLM reads along nearly one direction do not blow the columns up
    D = G @ np.linalg.inv(
        gram + RIDGE * np.mean(np.diag(gram)) * np.eye(len(gram))
    )  # g_j . D[:, t] ~ [j == t]
    weight = projection.summary.weight
    original = weight.detach().clone()

    # calibrate: how far each task's margin moves per unit of every task's probe logit (a task's margin also
    # feels the other tasks' steps, and the LLM saturates), then one Newton step on the columns of D, twice
    before = {p.name: answer_margins(model, prompts_of[p.name][0], p.options) for p in probes}
    mix = np.eye(len(probes))  # the step is D @ mix @ W

    def apply() -> None:
        delta = D @ mix @ np.stack([p.weights for p in probes])
        with torch.no_grad():
            weight.copy_(original + torch.as_tensor(delta, dtype=weight.dtype, device=weight.device))

    def response() -> np.ndarray:
        """R[t, j]: margin change of task t per unit of task j's probe logit, on task t's prompts."""
        R = np.zeros((len(probes), len(probes)))
        for t, p in enumerate(probes):
            messages, X = prompts_of[p.name]
            moved = answer_margins(model, messages, p.options) - before[p.name]
            logits = X @ np.stack([q.weights for q in probes]).T  # (prompts, tasks)
            design = np.column_stack([logits - logits.mean(0), np.ones(len(X))])
            R[t] = np.linalg.lstsq(design, moved, rcond=None)[0][:-1]
        return R

    for _ in range(CALIBRATION_ROUNDS):
        apply()
        R = response()
        for t, p in enumerate(probes):
            p.slope = float(R[t, t])
        if np.allclose(R, np.eye(len(probes)), atol=0.25):
            break
        mix = mix @ np.linalg.pinv(R)
        norms = np.linalg.norm(mix, axis=0)  # no column grows past the bound (nor shrinks below it)
        mix = mix * (np.clip(norms, *SCALE_BOUNDS) / np.maximum(norms, 1e-12))[None]
    else:
        apply()
        for t, p in enumerate(probes):
            p.slope = float(response()[t, t])
    for t, p in enumerate(probes):
        p.scale = float(mix[t, t])
    for p in probes:
        logger.info(
            "probe warm start: %s on %d scans (C %.3g), scale %.2f, margin per probe logit %.2f",
            p.name,
            p.n_scans,
            p.C,
            p.scale,
            p.slope,
        )
    return probes


def _msgs(row: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    messages = row["messages"]
    return json.loads(messages) if isinstance(messages, str) else messages
