"""Linear-probe warm start of the scan summary: Stage 3 starts where a linear model of the scan already is.

A few passes of LoRA tuning read less of a scan than logistic regression on the same numbers (BENCHMARKS.md,
"Does the LLM read the scan?"), and fine-tuning from a fitted linear head keeps more, out of distribution too,
than fine-tuning from a random one (Kumar et al. 2022, "LP-FT"). Here the head lives inside the LLaVA
interface, so the model stays one LLM that reads its input embeddings:

1. for each two-answer task, logistic regression on the training scans' summary components (the numbers the
   start marker's projection reads; C by site-grouped inner CV) gives a direction ``w`` in component space;
   for each regression task with bins (age), ridge regression on the same components (alpha by the same CV);
2. the gradient of the answer margin with respect to the start marker's input embedding, averaged over
   training prompts, gives ``g``: the embedding direction the LLM already turns into that answer. A two-answer
   task's margin is ``log p(second option) - log p(first)``; a regression's is its scored value, the
   expectation of the bin values under the bins' probabilities (what `predict` returns);
3. each logistic probe is rescaled so its logits spread over the training scans by ``PROBE_LOGIT_SD`` (a
   strongly regularized probe ranks scans well but its raw logits barely move), a ridge probe so its values
   spread as the training targets do, and the summary projection gains
   ``D M W``: ``D = G (G^T G + ridge)^-1`` (one column per task, so each task's margin moves with its own probe
   and, to first order, little with the others; a regression's column leaves the two-answer margins alone,
   `first_order_steps`), ``M`` a task-by-task mixing set by up to two Newton steps on
   the measured response of every task's margin to every probe's logit on training prompts, so the margins
   would move one-for-one with the probes. Each column of ``M`` is bounded (``SCALE_BOUNDS``), and on the
   SmolLM2 demo the bound is what stops it: the margins move by 0.04-0.2 per unit of (rescaled) logit, because
   the offsets grow far past the start marker's own embedding and the first layer's RMSNorm divides their size
   away (`eval/bench_answer_probe.py` prints the ratio). The
   calibrated start follows the probe less closely than the first-order step alone; the `full` preset's former
   recipe (300 steps, a probe teacher) ended better from it, while both presets now start from the first-order
   step and end better from it (BENCHMARKS.md, "The warm start's calibration rounds, re-chosen where Stage 3
   ends"; "The start marker reads the planted probe's sign"; "The `full` preset on the `cpu` recipe").

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
#: ridge regression's alpha grid for a regression task's probe (age), chosen by site-grouped inner CV
RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 8))
#: training prompts per task for the margin gradient and for the calibration of its scale
GRADIENT_PROMPTS = 16
CALIBRATION_PROMPTS = 48
#: prompt tokens of one forward and backward of the margin gradient (`margin_gradient`)
GRADIENT_TOKENS = 4096
#: bounds of the per-task rescaling (how far past the first-order step the projection may go)
SCALE_BOUNDS = (0.5, 20.0)  # of the scale's absolute value
#: SD of a probe's logits over the training scans after rescaling: cross-validated probes can be so strongly
#: regularized that their logits barely spread (autism on a validation fold: SD 0.024), while the Stage-2 model
#: already moves an answer's log-odds by an SD of about 4 between scans; at 8 the warm start alone lifted the
#: autism answer's AUC there from 0.48 to 0.61 (BENCHMARKS.md)
PROBE_LOGIT_SD = 8.0
#: ridge on the task gradients' Gram matrix, relative to its mean diagonal
RIDGE = 0.1
#: rescaling rounds at most (each one scores the calibration prompts once per task); 0 is the first-order step
#: alone, which both presets plant. The calibrated offset at the start marker grows to 15 times the marker's
#: embedding on training scans, so the first layer's RMSNorm keeps only its direction and the tuned answer
#: learns a step of its probe (BENCHMARKS.md, "The start marker reads the planted probe's sign"); from 0 rounds
#: the `cpu` recipe read autism better on the validation fold (AUC 0.664 against 0.649, two seeds) and, with
#: every phenotype task, so does the `full` preset ("The `full` preset on the `cpu` recipe"). The `full`
#: preset's former recipe (300 steps, a probe teacher) had ended better from 2 rounds ("calibration rounds,
#: re-chosen")
CALIBRATION_ROUNDS = 0
#: fewer training scans than this for a task: no probe for it (the fit would be noise)
MIN_SCANS = 10


@dataclass
class ProbeTask:
    """One task's probe: ``options`` (a two-answer margin is option 1 over option 0; a regression's is the
    expectation of ``values``), ``weights`` over the summary components, the CV-chosen ``C`` (a ridge probe:
    its alpha), and how the warm start moved the margin (``slope``: measured when the step is calibrated, NaN
    for the first-order step alone)."""

    name: str
    options: tuple[str, ...]
    weights: np.ndarray
    C: float
    n_scans: int
    scale: float = 1.0
    slope: float = float("nan")
    #: a regression's bin values (its margin is their expectation); None for a two-answer task
    values: np.ndarray | None = None
    #: a two-answer task's teacher: each training scan's probability of the second answer, keyed by
    #: ``(source, scan_id)`` (`probe_data`; `teacher_probabilities`; None: not asked for, or no ranking out of fold)
    teacher: dict[tuple[int, str], float] | None = None
    teacher_auc: float = float("nan")

    def summary(self) -> dict[str, Any]:
        """What a run records (metrics.json): the probe's size, strength and how the margin followed it."""
        return {
            "task": self.name,
            "options": list(self.options),
            "scans": self.n_scans,
            "kind": "logistic" if self.values is None else "ridge",
            "C": self.C,
            "weight_norm": float(np.linalg.norm(self.weights)),
            "scale": self.scale,
            "margin_per_logit": None if np.isnan(self.slope) else self.slope,
            "teacher_scans": 0 if self.teacher is None else len(self.teacher),
            "teacher_out_of_fold_auc": self.teacher_auc,
        }


def two_answer_tasks(cards: Sequence[Any]) -> list[Any]:
    """Task cards whose answer is one of exactly two options (autism or not, modularity higher or lower)."""
    return [c for c in cards if c.type != "regression" and len(getattr(c, "options", ()) or ()) == 2]


def binned_regressions(cards: Sequence[Any]) -> list[Any]:
    """Regression task cards scored as an expectation over their bins (age): a probe can warm-start them too."""
    out = []
    for c in cards:
        if c.type == "regression" and len(getattr(c, "options", ()) or ()) >= 2 and hasattr(c, "bin_values"):
            if len(c.bin_values()) == len(c.options):
                out.append(c)
    return out


def bin_values_of(card: Any) -> np.ndarray | None:
    """A regression card's bin values (its margin is their expectation); None for a two-answer card."""
    return np.asarray(card.bin_values(), dtype=np.float64) if card.type == "regression" else None


def margin_of(logprobs: Any, values: Any = None) -> Any:
    """The number a task's answer is read as, from the options' log-probabilities ``(..., options)`` (torch).

    Two answers: ``log p(second) - log p(first)``; bins (``values``): the expectation of the bin values under
    the options' probabilities, the regression value `predict` returns.
    """
    import torch

    if values is None:
        return logprobs[..., 1] - logprobs[..., 0]
    weights = torch.as_tensor(values, dtype=logprobs.dtype, device=logprobs.device)
    return torch.softmax(logprobs, dim=-1) @ weights


def fit_probe(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights over ``components`` of L2 logistic regression (balanced classes, C by grouped CV) and its C.

    The components are used as they are (no standardizing), so the weights apply to what the projection reads.
    """
    from sklearn.linear_model import LogisticRegressionCV

    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise FmriInputError(
            f"A probe needs at least 2 training scans per answer, got {counts.tolist()}",
            fix="train on more labelled scans, or leave out --probe-init",
        )
    cv = probe_splits(components, y, groups, seed)
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


def probe_splits(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A two-answer probe's inner folds: by site (stratified) when there are 3 sites or more, else stratified
    folds of scans; the probe's C and its teacher's out-of-fold logits come from the same folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n_groups = len(set(groups.tolist())) if groups is not None else 0
    if n_groups >= 3:
        splits = StratifiedGroupKFold(n_splits=min(5, n_groups), shuffle=True, random_state=seed)
        return list(splits.split(components, y, groups))
    folds = StratifiedKFold(min(5, int(np.bincount(y, minlength=2).min())), shuffle=True, random_state=seed)
    return list(folds.split(components, y))


def teacher_probabilities(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, C: float, seed: int = 0
) -> tuple[np.ndarray | None, float]:
    """A two-answer probe as a teacher: each training scan's probability of the second answer, and the
    probe's out-of-fold AUC.

    The probe (L2 logistic regression at the CV-chosen ``C``, balanced classes) ranks scans well but its
    strongly regularized logits barely spread, so they are Platt-scaled: a logistic regression of the labels
    on the probe's site-grouped out-of-fold logits sets how confident the teacher is, as confident as it is
    right on sites it did not see. None when the out-of-fold logits do not rank the answers (slope <= 0).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    oof, logits, _ = probe_logits(components, y, groups, C, seed)
    auc = float(roc_auc_score(y, oof))
    platt = LogisticRegression(C=1e6, class_weight="balanced", max_iter=3000).fit(oof[:, None], y)
    if float(platt.coef_[0, 0]) <= 0:
        return None, auc
    return platt.predict_proba(logits[:, None])[:, 1], auc


def probe_logits(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, C: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """A two-answer probe (L2 logistic regression at ``C``, balanced classes) on its training scans: each
    scan's out-of-fold logit (`probe_splits`: how the probe reads sites it did not see), each scan's logit
    from the probe refitted on all of them (what it learnt, its own scans included) and that refit's
    intercept."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    y = np.asarray(y, dtype=int)
    probe = LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
    cv = probe_splits(components, y, groups, seed)
    oof = cross_val_predict(probe, components, y, cv=cv, method="decision_function")
    refit = probe.fit(components, y)
    return oof, refit.decision_function(components), float(refit.intercept_[0])


def fit_ridge_probe(
    components: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights over ``components`` of ridge regression of ``y`` (alpha by grouped CV) and its alpha.

    Its predictions are in ``y``'s units, the scored answer's; the intercept is left to the LLM (the
    calibration measures how the answer moves, not where it sits).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, KFold

    if len(y) < 3 or float(np.std(y)) == 0.0:
        raise FmriInputError(
            f"A regression probe needs at least 3 training scans with different values, got {len(y)}",
            fix="train on more labelled scans, or leave out --probe-init",
        )
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    if n_groups >= 3:
        cv = list(GroupKFold(n_splits=min(5, n_groups)).split(components, y, groups))
    else:
        cv = list(KFold(min(5, len(y)), shuffle=True, random_state=seed).split(components))
    model = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv, scoring="neg_mean_absolute_error").fit(components, y)
    return np.asarray(model.coef_, dtype=np.float64).reshape(-1), float(model.alpha_)


def _prompt_batch(processor: Any, messages: Sequence[list[dict[str, Any]]]) -> Any:
    """Left-padded prompts (user turns up to the answer) of resolved instruction messages."""
    prompts = []
    for conv in messages:
        first = next((i for i, m in enumerate(conv) if m["role"] == "assistant"), len(conv))
        prompts.append(list(conv[:first]))
    return processor(prompts, add_generation_prompt=True)


def answer_margins(
    model: Any,
    messages: Sequence[list[dict[str, Any]]],
    options: Sequence[str],
    values: Sequence[float] | None = None,
) -> np.ndarray:
    """The scored answer after each prompt, as `predict` reads it: ``log p(options[1]) - log p(options[0])``,
    or with bin ``values`` their expectation (`margin_of`)."""
    import torch

    from fmrilm.model.scoring import answer_ids, option_logprobs

    processor = model.processor
    ids = [answer_ids(processor, o) for o in options]
    out = []
    with torch.no_grad():
        for start in range(0, len(messages), 16):
            batch = _prompt_batch(processor, messages[start : start + 16]).to(model.device)
            lp = option_logprobs(model.llm, batch, ids, processor.tokenizer.pad_token_id, model.embed_inputs)
            out.append(margin_of(lp.double(), values).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def margin_gradient(
    model: Any,
    messages: Sequence[list[dict[str, Any]]],
    options: Sequence[str],
    values: Sequence[float] | None = None,
) -> np.ndarray:
    """Mean gradient of the answer margin (`margin_of`) with respect to the start marker's input embedding
    ``(hidden,)``, through the scoring that `predict` runs (`option_logprobs`: each prompt once, its options
    after it from the KV cache). The prompts are tokenized once, left-padded, and run in chunks of about
    `GRADIENT_TOKENS` tokens; each prompt's gradient is its own (rows do not see each other), so one backward
    serves many."""
    import torch

    from fmrilm.model.scoring import answer_ids, option_logprobs

    processor = model.processor
    option_ids = [answer_ids(processor, o) for o in options]
    pad = int(processor.tokenizer.pad_token_id or 0)
    batch = _prompt_batch(processor, messages).to(model.device)  # every prompt tokenized once, left-padded
    kept = (batch["input_ids"] == processor.ids.start_id).any(dim=1).nonzero()[:, 0]
    if len(kept) == 0:
        raise FmriInputError(
            "No training prompt has a scan summary (a start marker) to warm-start",
            fix="use a model with the scan summary on, or leave out --probe-init",
        )
    grads = []
    for rows in kept.split(max(1, GRADIENT_TOKENS // batch["input_ids"].shape[1])):
        lead = int((batch["attention_mask"][rows].sum(dim=0) == 0).sum())  # padding in every row of the chunk
        part = {k: v[rows][:, lead:] for k, v in batch.items()}
        ids = part["input_ids"]
        with torch.no_grad():
            base = model.embed_inputs(ids, part.get("connectome_values"))
        x = base.detach().clone().requires_grad_(True)
        lp = option_logprobs(model.llm, part, option_ids, pad, lambda *_, x=x: x)
        (grad,) = torch.autograd.grad(margin_of(lp.double(), values).sum(), x)
        marker = (ids == processor.ids.start_id).int().argmax(dim=1)  # each prompt's first start marker
        grads.append(grad[torch.arange(len(ids), device=ids.device), marker].float().cpu().numpy())
    return np.concatenate(grads).mean(axis=0)


def summary_components(values: Any, k: int) -> np.ndarray:
    """The first ``k`` components of one scan's connectome values: what the summary projection reads."""
    return np.asarray(values, dtype=np.float64).reshape(-1)[:k]


def warm_start_summary(
    model: Any,
    sources: Sequence[tuple[Sequence[dict[str, Any]], Any]],
    cards: Sequence[Any],
    *,
    seed: int = 0,
    rounds: int = CALIBRATION_ROUNDS,
    teachers: bool = False,
) -> list[ProbeTask]:
    """Add each two-answer and binned-regression task's probe to ``model``'s summary projection (in place);
    returns the probes.

    ``sources`` are ``(rows, codes)`` pairs: training instruction rows (``task``, ``scan_id``, ``answer``,
    ``messages``, ``site``) and their scans' encoded codes (`train.stage3.encode_scans`), whose connectome
    values hold the components. Only single-question rows are used, one per scan and task. ``rounds`` of
    calibration (0: the first-order step alone); ``teachers``: each two-answer probe also keeps its
    training scans' probabilities (`teacher_probabilities`) for distillation in Stage 3. The LLM is measured
    in eval mode and left in the mode it was in.
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
        return _warm_start(model, projection, sources, cards, seed, rounds, teachers)
    finally:
        model.llm.train(was_training)


def _warm_start(
    model: Any,
    projection: Any,
    sources: Sequence[tuple[Sequence[dict[str, Any]], Any]],
    cards: Any,
    seed: int,
    rounds: int = CALIBRATION_ROUNDS,
    teachers: bool = False,
) -> list[ProbeTask]:
    import torch
    from fmrilm.train.stage3 import resolve_messages

    k = projection.summary_components
    rng = np.random.default_rng(seed)
    probes, gradients, prompts_of = [], [], {}
    for card in [*two_answer_tasks(cards), *binned_regressions(cards)]:
        values = bin_values_of(card)
        data = probe_data(card, sources, k)
        probe = None if data is None else fitted_probe(card, *data, seed=seed, teachers=teachers)
        if probe is None:
            continue
        chosen, X = data[0], data[1]
        messages = [resolve_messages(r["messages"], c) for r, c, _ in chosen]
        order = rng.permutation(len(chosen))
        g = margin_gradient(model, [messages[i] for i in order[:GRADIENT_PROMPTS]], card.options, values)
        probes.append(probe)
        gradients.append(g)
        prompts_of[card.name] = (
            [messages[i] for i in order[:CALIBRATION_PROMPTS]],
            X[order[:CALIBRATION_PROMPTS]],
        )
    if not probes:
        return []
    binary = [t for t, p in enumerate(probes) if p.values is None]
    regressions = [t for t, p in enumerate(probes) if p.values is not None]
    D = first_order_steps(np.stack(gradients, axis=1), binary)
    weight = projection.summary.weight
    original = weight.detach().clone()

    # calibrate: how far each task's margin moves per unit of every task's probe logit (a task's margin also
    # feels the other tasks' steps, and the LLM saturates), then one Newton step on the columns of D, twice.
    # The two-answer tasks are calibrated together; a regression on its own slope only (its cross-terms with
    # the two-answer tasks, fitted on 48 prompts, sent the joint step astray on a validation fold)
    mix = np.eye(len(probes))  # the step is D @ mix @ W

    def apply() -> None:
        delta = D @ mix @ np.stack([p.weights for p in probes])
        with torch.no_grad():
            weight.copy_(original + torch.as_tensor(delta, dtype=weight.dtype, device=weight.device))

    def response() -> np.ndarray:
        """R[t, j]: margin change of task t per unit of task j's probe logit, on task t's prompts (j in t's
        calibration block; zero elsewhere)."""
        R = np.zeros((len(probes), len(probes)))
        for t, p in enumerate(probes):
            messages, X = prompts_of[p.name]
            moved = answer_margins(model, messages, p.options, p.values) - before[p.name]
            block = binary if p.values is None else [t]
            logits = X @ np.stack([probes[j].weights for j in block]).T  # (prompts, block)
            design = np.column_stack([logits - logits.mean(0), np.ones(len(X))])
            R[t, block] = np.linalg.lstsq(design, moved, rcond=None)[0][:-1]
        return R

    if rounds == 0:  # the first-order step alone: nothing is calibrated, so nothing is measured (the margins
        # before and after, a third of a cpu demo's warm start, only gave the slope its log line reports)
        apply()
        return _finished(probes, mix)
    before = {p.name: answer_margins(model, prompts_of[p.name][0], p.options, p.values) for p in probes}
    for _ in range(rounds):
        apply()
        R = response()
        for t, p in enumerate(probes):
            p.slope = float(R[t, t])
        if np.allclose(R, np.eye(len(probes)), atol=0.25):
            break
        if binary:
            sub = mix[np.ix_(binary, binary)] @ np.linalg.pinv(R[np.ix_(binary, binary)])
            norms = np.linalg.norm(sub, axis=0)  # no column grows past the bound (nor shrinks below it)
            mix[np.ix_(binary, binary)] = (
                sub * (np.clip(norms, *SCALE_BOUNDS) / np.maximum(norms, 1e-12))[None]
            )
        for t in regressions:  # a slope that is not positive: the first-order step failed; leave it
            if R[t, t] > 0:
                mix[t, t] = float(np.clip(mix[t, t] / R[t, t], *SCALE_BOUNDS))
    else:
        apply()
        R = response()
        for t, p in enumerate(probes):
            p.slope = float(R[t, t])
    return _finished(probes, mix)


def _finished(probes: list[ProbeTask], mix: np.ndarray) -> list[ProbeTask]:
    """The probes with their scales set from ``mix``, each logged."""
    for t, p in enumerate(probes):
        p.scale = float(mix[t, t])
        moved = "" if np.isnan(p.slope) else f", margin per probe logit {p.slope:.2f}"
        logger.info(
            "probe warm start: %s on %d scans (C %.3g), scale %.2f%s", p.name, p.n_scans, p.C, p.scale, moved
        )
    return probes


def probe_data(
    card: Any, sources: Sequence[tuple[Sequence[dict[str, Any]], Any]], k: int
) -> tuple[list[tuple[dict[str, Any], Any, int]], np.ndarray, np.ndarray, np.ndarray] | None:
    """A task's probe data: ``(chosen, X, y, groups)``, one single-question training row per scan with an
    answer (``chosen``: ``(row, codes, source)``, ``source`` the index of its ``(rows, codes)`` pair: scan ids
    are unique within a cohort only), its scan's first ``k`` summary components, its target and its site;
    None when fewer than `MIN_SCANS` scans have one."""
    chosen = []
    for source, (rows, codes) in enumerate(sources):
        connectome = getattr(codes, "connectome", {}) or {}
        seen: set[str] = set()
        for row in rows:
            sid = str(row["scan_id"])
            if row["task"] != card.name or sid in seen or sid not in connectome:
                continue
            if _target(row, card) is None or sum(m["role"] == "assistant" for m in _msgs(row)) != 1:
                continue
            seen.add(sid)
            chosen.append((row, codes, source))
    if len(chosen) < MIN_SCANS:
        logger.info("probe warm start: %s skipped (%d training scans)", card.name, len(chosen))
        return None
    X = np.stack([summary_components(c.connectome[str(r["scan_id"])].values, k) for r, c, _ in chosen])
    y = np.asarray([_target(r, card) for r, _, _ in chosen], dtype=np.float64)
    groups = np.asarray([str(r.get("site", "")) for r, _, _ in chosen])
    return chosen, X, y, groups


def fitted_probe(
    card: Any,
    chosen: Sequence[tuple[dict[str, Any], Any, int]],
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    teachers: bool = False,
) -> ProbeTask | None:
    """A task's probe on its `probe_data`, its weights rescaled to the spread the warm start plants (and with
    ``teachers`` a two-answer probe's `teacher_probabilities` per scan); None when it cannot be fitted."""
    values = bin_values_of(card)
    try:
        if values is None:
            w, c = fit_probe(X, y.astype(int), groups, seed)
        else:
            w, c = fit_ridge_probe(X, y, groups, seed)
    except FmriInputError as exc:
        logger.info("probe warm start: %s skipped (%s)", card.name, exc)
        return None
    teacher, teacher_auc = None, float("nan")
    if teachers and values is None:
        q, teacher_auc = teacher_probabilities(X, y.astype(int), groups, c, seed)
        if q is not None:
            teacher = {(i, str(r["scan_id"])): float(v) for (r, _, i), v in zip(chosen, q, strict=True)}
    spread = float(np.std(X @ w))
    if spread > 1e-12:  # the ranking, at a spread that competes with the LLM's own answers
        w = w * ((PROBE_LOGIT_SD if values is None else float(np.std(y))) / spread)
    return ProbeTask(
        card.name, tuple(card.options), w, c, len(chosen), values=values,
        teacher=teacher, teacher_auc=teacher_auc,
    )  # fmt: skip


def probe_teachers(
    model: Any, sources: Sequence[tuple[Sequence[dict[str, Any]], Any]], cards: Sequence[Any], seed: int = 0
) -> list[ProbeTask]:
    """The two-answer probes with their teachers, fitted as `warm_start_summary` fits them but leaving the
    model alone: a resumed Stage 3 distils the same teachers its first run did."""
    projection = getattr(model, "soft_projection", None)
    if projection is None or projection.summary is None:
        raise FmriInputError(
            "Probe teachers read the scan summary, which this model does not have",
            fix="build the model with FmriLM.from_base(..., scan_summary=True), or leave out --probe-teacher",
        )
    out = []
    for card in two_answer_tasks(cards):
        data = probe_data(card, sources, projection.summary_components)
        probe = None if data is None else fitted_probe(card, *data, seed=seed, teachers=True)
        if probe is not None:
            out.append(probe)
    return out


def first_order_steps(G: np.ndarray, binary: Sequence[int]) -> np.ndarray:
    """``D`` (hidden, tasks) with ``g_j . D[:, t] ~ [j == t]`` from the margin gradients ``G`` (hidden, tasks).

    Two-answer tasks: ``D = G (G^T G + ridge)^-1`` over their columns (ridge relative to the Gram's mean
    diagonal, so tasks the LLM reads along nearly one direction do not blow the columns up). A regression's
    column is its gradient with the two-answer tasks' directions projected out, scaled so its own margin moves
    one-for-one: moving the age answer leaves the two-answer margins where they were, to first order.
    """
    D = np.zeros_like(G)
    if len(binary):
        B = G[:, list(binary)]
        gram = B.T @ B
        D[:, list(binary)] = B @ np.linalg.inv(gram + RIDGE * np.mean(np.diag(gram)) * np.eye(len(gram)))
    basis = np.linalg.qr(G[:, list(binary)])[0] if len(binary) else np.zeros((G.shape[0], 0))
    for t in sorted(set(range(G.shape[1])) - set(binary)):
        g = G[:, t] - basis @ (basis.T @ G[:, t])
        D[:, t] = g / max(float(G[:, t] @ g), 1e-12)
    return D


def _target(row: dict[str, Any], card: Any) -> float | None:
    """A training row's answer as the probe's target: 0 / 1 (a two-answer task's first / second option), or
    the row's number (a regression); None when the row has no such answer (a sentence, a multi-question)."""
    if card.type == "regression":
        value = row.get("value")
        return None if value is None or not np.isfinite(float(value)) else float(value)
    answer = str(row["answer"])
    return float(answer == card.options[1]) if answer in card.options else None


def _msgs(row: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    messages = row["messages"]
    return json.loads(messages) if isinstance(messages, str) else messages
