"""`fmrilm embed`: one embedding per scan of a cohort (what the LLM makes of it), as a table for your own models.

The table has the scan's ids (``scan_id``, ``subject_id``, ``site``; ``window`` with ``--windows``) and one
column per embedding dimension (``e0``, ``e1``, ...). The format follows the suffix of ``--out``: ``.csv``,
``.tsv``, ``.parquet`` or ``.npz`` (arrays ``scan_id``, ``subject_id``, ``site``, ``embedding`` and, with
``--windows``, ``window``). The file is written beside and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

SUFFIXES = (".csv", ".tsv", ".parquet", ".npz")

EPILOG = """examples:
  fmrilm embed --model runs/demo/model --cohort cohorts/abide --out abide_embeddings.parquet
  fmrilm embed --model runs/demo/model --cohort cohorts/abide --out windows.csv --windows
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import positive_int

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="folder written by FmriLM.save_pretrained"
    )
    parser.add_argument("--cohort", required=True, metavar="DIR", help="cohort folder (fmrilm cohort import)")
    parser.add_argument("--out", required=True, metavar="FILE", help=f"table to write: {', '.join(SUFFIXES)}")
    parser.add_argument("--windows", action="store_true", help="one row per window instead of per scan")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="scans per forward pass"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def check_out(out: str, overwrite: bool) -> Path:
    """The output path, checked before anything is computed."""
    path = Path(out).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FmriInputError(
            f"--out must end in {', '.join(SUFFIXES)} (the suffix chooses the format), got '{path.name}'",
            file=out,
            fix="e.g. --out embeddings.parquet",
        )
    if path.is_dir():
        raise FmriInputError("--out is a folder, not a file", file=out, fix="give a file name")
    if path.exists() and not overwrite:
        raise FmriInputError(
            "--out already exists", file=out, fix="give a new file name, or pass --overwrite to replace it"
        )
    if not path.parent.exists():
        raise FmriInputError("The folder of --out does not exist", file=path.parent, fix="create it first")
    return path


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise FmriInputError(f"--batch-size must be at least 1, got {args.batch_size}", fix="pass e.g. 8")
    out = check_out(args.out, args.overwrite)
    from fmrilm.cohort import Cohort

    cohort = Cohort.load(args.cohort)  # a bad cohort fails before the model loads
    if not len(cohort):
        raise FmriInputError("The cohort has no scans", file=args.cohort, fix="import scans into it first")

    import torch
    from tqdm.auto import tqdm

    from fmrilm.chat_cli import _device_map
    from fmrilm.logs import no_library_progress_bars
    from fmrilm.model.embedding import embed_batch
    from fmrilm.model.modeling import FmriLM

    with no_library_progress_bars():
        model = FmriLM.from_pretrained(args.model, device_map=_device_map(args.device, torch)).eval()
    ids: list[dict[str, Any]] = []
    vectors = []
    rows = list(range(len(cohort)))
    with tqdm(total=len(rows), desc="embedding", unit="scan") as bar:
        for start in range(0, len(rows), args.batch_size):
            scans = [cohort.scan(i) for i in rows[start : start + args.batch_size]]
            for scan, vec in zip(scans, embed_batch(model, scans, windows=args.windows), strict=True):
                base = {"scan_id": scan.scan_id, "subject_id": scan.subject_id, "site": scan.site}
                if args.windows:
                    for w, v in enumerate(vec):
                        ids.append({**base, "window": w})
                        vectors.append(v)
                else:
                    ids.append(base)
                    vectors.append(vec)
            bar.update(len(scans))
    write_table(out, ids, vectors)
    print(f"wrote {len(ids)} rows x {len(vectors[0])} dimensions to {out}")
    return 0


def write_table(out: Path, ids: list[dict[str, Any]], vectors: list[Any]) -> None:
    """Write ids + embedding columns in the format of ``out``'s suffix, beside then renamed into place."""
    import numpy as np
    import pandas as pd

    matrix = np.stack(vectors).astype(np.float32)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}{out.suffix}")
    try:
        suffix = out.suffix.lower()
        if suffix == ".npz":
            arrays = {k: np.asarray([str(r[k]) for r in ids]) for k in ("scan_id", "subject_id", "site")}
            if ids and "window" in ids[0]:
                arrays["window"] = np.asarray([r["window"] for r in ids], dtype=np.int64)
            with open(tmp, "wb") as fh:
                np.savez(fh, embedding=matrix, **arrays)
        else:
            frame = pd.concat(
                [
                    pd.DataFrame(ids),
                    pd.DataFrame(matrix, columns=[f"e{j}" for j in range(matrix.shape[1])]),
                ],
                axis=1,
            )
            if suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",", index=False)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
