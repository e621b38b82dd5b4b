"""`fmrilm networks`: group a cohort's regions into K networks from the model alone, and say how that compares
with the atlas's own network labels and with clustering the raw FC of the same scans.

The model is a saved `FmriLM` folder or a Stage-1 fMRI tokenizer folder (``fmrilm train tokenizer``; methods
``connectome`` and ``encoder`` only). The table printed has one row per discovered network (its size, the atlas
network it shares most regions with, a few of its regions), then the agreement of the model's networks and of
raw-FC networks with the atlas's labels (adjusted Rand index, accuracy after matching networks one to one).
``--csv`` writes every region's network; ``--png`` draws them on the brain (nilearn markers).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

EPILOG = """examples:
  fmrilm networks --model runs/demo/model --cohort cohorts/sim -k 6 --csv networks.csv --png networks.png
  fmrilm networks --model runs/tokenizer --cohort cohorts/abide -k 13 --method encoder --max-scans 32
  fmrilm networks --model runs/demo/model --scan a.1D --scan b.1D --tr 2.0 -k 7

methods: llm (silence each region, read how the LLM's scan embedding moves; one LLM pass per region and scan),
connectome (the same, read at the connectome tokens' continuous values), encoder (the fMRI tokenizer's
encoder output per region over the scan).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.networks import METHODS
    from fmrilm.safety import nonnegative_int, positive_int

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="folder written by FmriLM.save_pretrained, or a Stage-1 tokenizer folder",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", metavar="DIR", help="cohort folder (fmrilm cohort import / simulate)")
    source.add_argument("--scan", action="append", metavar="FILE", help="scan file (repeatable)")
    parser.add_argument("--atlas", help="atlas of the --scan files (default: the atlas saved with the model)")
    parser.add_argument(
        "--tr", type=float, help="repetition time in seconds, when the scan files do not give it"
    )
    parser.add_argument(
        "-k", "--n-networks", default="7", metavar="K", help="networks to find (2 to regions)"
    )
    parser.add_argument(
        "--method",
        help=f"{', '.join(METHODS)} (default: llm for a model, connectome or encoder for a tokenizer)",
    )
    parser.add_argument(
        "--max-scans", type=positive_int, default=16, metavar="N", help="scans used (a seeded choice)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="scan choice, silencing noise and clustering seed"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="scans per LLM pass")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the raw-FC clustering")
    parser.add_argument("--csv", metavar="OUT.csv", help="write every region's network to this table")
    parser.add_argument("--png", metavar="OUT.png", help="draw the networks on the brain into this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --csv / --png files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")


def run(args: argparse.Namespace) -> int:
    from fmrilm.logs import library_warnings, no_library_progress_bars

    with library_warnings(verbose=False), no_library_progress_bars():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from fmrilm.networks import check_method_name, check_n_networks, compare_networks, fc_networks, summary

    csv = _check_file(args.csv, ".csv", "--csv", args.overwrite)
    png = _check_file(args.png, ".png", "--png", args.overwrite)
    kind, folder = model_kind(args.model)
    if args.method is not None:
        check_method_name(args.method, tokenizer_only=kind == "tokenizer")  # fails before anything loads
    config = None
    if kind == "lm":
        from fmrilm.chat_cli import _processor_config

        config = _processor_config(str(folder))
    scans = _scans(args, config)
    k = check_n_networks(args.n_networks, scans[0].n_regions)

    model = _load_model(kind, folder, args.device)
    found = model_networks(model, scans, k, args)
    method = found.attrs["method"]
    atlas = scans[0].atlas
    print(
        f"{k} networks of {len(scans)} scan(s), atlas '{atlas.name}' ({atlas.n_regions} regions), "
        f"method {method} of {args.model}:"
    )
    print(_table(summary(found)))
    rows = [(f"model ({method})", found)]
    if not args.no_baseline:
        rows.append(("raw FC (mean Fisher z)", fc_networks(scans, k, seed=args.seed)))
    scored = [(name, compare_networks(frame)) for name, frame in rows]
    reference = scored[0][1]
    if reference["n_reference"] >= 2:
        print(
            f"agreement with the atlas's {reference['n_reference']} networks over {reference['n_regions']} regions "
            "('unassigned' left out): adjusted Rand index, accuracy after one-to-one matching"
        )
        width = max(len(name) for name, _ in scored)
        for name, score in scored:
            print(f"  {name:<{width}}  ARI {score['ari']:+.3f}  accuracy {score['accuracy']:.3f}")
        if len(scored) > 1 and scored[1][1]["ari"] > scored[0][1]["ari"]:
            print("  raw FC finds the atlas's networks better than the model does on these scans")
    else:
        print("the atlas names fewer than two networks, so there is nothing to compare with")
    if csv is not None:
        _write_csv(found, csv)
    if png is not None:
        draw_networks(found, atlas, png, f"{k} networks ({method})")
    return 0


def model_kind(path: str) -> tuple[str, Path]:
    """``("lm", folder)`` for an `FmriLM` folder, ``("tokenizer", folder)`` for a Stage-1 tokenizer folder."""
    from fmrilm.model.processing import PROCESSOR_CONFIG_NAME

    folder = Path(path).expanduser()
    if folder.is_dir():
        for candidate in (folder, folder / "model"):
            if (candidate / PROCESSOR_CONFIG_NAME).exists():
                return "lm", candidate
        config = folder / "config.json"
        if config.exists():
            try:
                kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
            except (ValueError, UnicodeDecodeError, AttributeError):
                kind = None
            if kind == "fmri_tokenizer":
                return "tokenizer", folder
        raise FmriInputError(
            "--model is neither a saved fmrilm model nor an fMRI tokenizer folder",
            file=path,
            fix="pass a folder written by FmriLM.save_pretrained or by fmrilm train tokenizer",
        )
    return "lm", folder  # a hub id or a missing path: the model loader says which


def _scans(args: argparse.Namespace, config: Any) -> list[Any]:
    from fmrilm.networks import resolve_scans

    if args.cohort is not None:
        path = Path(args.cohort).expanduser()
        if not path.is_dir():
            raise FmriInputError("--cohort names no folder", file=args.cohort, fix="pass a cohort folder")
        return resolve_scans(str(path), max_scans=args.max_scans, seed=args.seed)
    from fmrilm.chat_cli import _load

    scans = [_load(p, args, config) for p in args.scan]
    return resolve_scans(scans, max_scans=args.max_scans, seed=args.seed)


def _load_model(kind: str, folder: Path, device: str) -> Any:
    import torch

    from fmrilm.chat_cli import _device_map

    if kind == "lm":
        from fmrilm.model.modeling import FmriLM

        return FmriLM.from_pretrained(str(folder), device_map=_device_map(device, torch)).eval()
    from fmrilm.safety import check_model_folder, model_folder_errors
    from fmrilm.tokenizer import FmriTokenizerModel

    check_model_folder(folder)
    with model_folder_errors(folder, "fMRI tokenizer"):
        tok = FmriTokenizerModel.from_pretrained(str(folder))
    mapped = _device_map(device, torch)
    return (tok.to(mapped) if mapped else tok).eval()


def model_networks(model: Any, scans: list[Any], k: int, args: argparse.Namespace) -> Any:
    from fmrilm.networks import discover_networks

    return discover_networks(
        model, scans, k, method=args.method, seed=args.seed, batch_size=args.batch_size, progress=True
    )


def _table(frame: Any) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.2f}")


def _check_file(path: str | None, suffix: str, flag: str, overwrite: bool) -> Path | None:
    if path is None:
        return None
    out = Path(path).expanduser()
    if out.suffix.lower() != suffix:
        raise FmriInputError(
            f"{flag} must name a {suffix} file", file=path, fix=f"e.g. {flag} networks{suffix}"
        )
    if out.is_dir():
        raise FmriInputError(f"{flag} is a folder, not a file", file=path, fix="give a file name")
    if out.exists() and not overwrite:
        raise FmriInputError(
            f"{flag} names a file that already exists", file=path, fix="pass --overwrite or another file name"
        )
    if not out.parent.exists():
        raise FmriInputError(f"The folder of {flag} does not exist", file=out.parent, fix="create it first")
    return out


def _write_csv(found: Any, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}.csv")
    try:
        found.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


def draw_networks(found: Any, atlas: Any, png: Path, title: str) -> Path:
    """Markers at the regions' MNI coordinates, one colour per network (nilearn), saved with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D
    from nilearn import plotting

    labels = found["network"].to_numpy()
    palette = plt.get_cmap("tab20" if labels.max() > 10 else "tab10")
    colours = [palette((int(v) - 1) % palette.N) for v in labels]
    tmp = png.with_name(f".{png.name}.tmp-{secrets.token_hex(4)}.png")
    fig = plt.figure(figsize=(10, 4.0))
    try:
        display = plotting.plot_connectome(
            np.zeros((len(labels), len(labels))),
            np.asarray(atlas.coords),
            node_color=colours,
            node_size=25,
            display_mode="ortho",
            title=title,
            figure=fig,
            colorbar=False,
        )
        handles = [
            Line2D([], [], marker="o", linestyle="", color=palette((n - 1) % palette.N), label=f"network {n}")
            for n in sorted({int(v) for v in labels})
        ]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
        fig.savefig(tmp, dpi=110)
        display.close()
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    print(f"wrote {png}")
    return png
