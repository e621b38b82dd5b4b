"""The benchmark behind the connectome tokenizer's feature choice (eval/bench_connectome_features.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fmrilm.eval.bench_connectome_features import Variant, main, probe_auc


def test_a_variant_names_the_tokenizer_settings_it_fits_with():
    v = Variant.parse("std-relative-all")
    assert (v.standardize, v.whiten, v.components) == (True, False, None)
    config = v.config(n_training_scans=549)
    assert config.components == 544 and config.standardize and not config.whiten  # every supported one
    w = Variant.parse("raw-whitened-384")
    config = w.config(n_training_scans=549)
    assert (config.components, config.standardize, config.whiten) == (384, False, True)
    assert w.config(n_training_scans=300).components == 288  # no more than the scans support


@pytest.mark.parametrize("bad", ["std-relative", "zscore-whitened-384", "std-whitened-0", ","])
def test_a_misspelt_variant_is_refused_by_name(bad, capsys):
    with pytest.raises(SystemExit):
        main(["--variants", bad])
    err = capsys.readouterr().err
    assert "--variants" in err and (bad in err or "at least one variant" in err)


def test_the_probe_reads_a_planted_trait_on_held_out_sites_and_nothing_from_noise():
    rng = np.random.default_rng(0)
    n = 400
    sites = np.asarray([f"site{i % 8}" for i in range(n)])
    X = rng.standard_normal((n, 30))
    y = (X[:, 0] + 0.7 * rng.standard_normal(n) > 0).astype(int)
    train, test = (
        np.flatnonzero(~np.isin(sites, ["site0", "site1"])),
        np.flatnonzero(np.isin(sites, ["site0", "site1"])),
    )
    assert probe_auc(X, y, sites, train, test) > 0.8
    shuffled = rng.permutation(y)
    assert abs(probe_auc(X[:, 1:], shuffled, sites, train, test) - 0.5) < 0.12


def test_the_benchmarks_read_two_answer_tasks_and_name_any_other():
    import pandas as pd
    from fmrilm.eval.bench_components import binary_tasks

    table = pd.DataFrame({"diagnosis": ["autism", "control", None, "autism"], "sex": ["male"] * 4})
    (card, classes, values, known) = binary_tasks(table, "diagnosis", error=None)["diagnosis"]
    assert card.target == "diagnosis" and classes == ["autism", "control"]
    assert known.tolist() == [True, True, False, True] and (values == "control").tolist() == [0, 1, 0, 0]
    errors = []
    binary_tasks(table, "sex", error=errors.append)
    assert errors and "sex has 1 classes" in errors[0]
