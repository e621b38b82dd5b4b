"""`fmrilm perturb`: what the model would answer if some regions of a scan were different, and which networks
drive an answer; printed as a table and drawn on the brain (nilearn markers at the regions' MNI coordinates).

Perturbation (``--network`` or ``--regions`` with ``--change``): every task the model stores (or ``--task``)
is answered for the scan as it is and as perturbed; the brain map shows how much each region's connectivity
changed (mean absolute change of its correlation with every other region). Attribution (``--attribute TASK``):
each network (``--by network``) or region (``--by region``) is perturbed in turn with ``--change`` (default
silence) and ranked by how much the answer moves; the map shows each region's effect. See `fmrilm.perturb` for
what each change means.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

EPILOG = """examples:
  fmrilm perturb --model runs/demo/model --scan sub-0051456_rois_cc200.1D --tr 2.0 \\
      --network default --change scale:0.5 --png dmn_weaker.png
  fmrilm perturb --model runs/demo/model --scan a.1D --tr 2.0 --regions 12 40 41 --change couple:+0.3
  fmrilm perturb --model runs/demo/model --scan a.1D --tr 2.0 --attribute diagnosis --png drivers.png

changes: scale:A (0..1: keep a share A of each region's signal, the rest noise), silence (= scale:0),
zero (set to 0: the model fills the region from its neighbours), couple:C (-1..+1: mix in / remove the
regions' shared signal).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import nonnegative_int, positive_int

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="folder written by FmriLM.save_pretrained"
    )
    parser.add_argument("--scan", required=True, metavar="FILE", help="scan file (region table or NIfTI)")
    parser.add_argument("--atlas", help="atlas of the scan (default: the atlas saved with the model)")
    parser.add_argument("--tr", type=float, help="repetition time in seconds, when the file does not give it")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--network", action="append", metavar="NAME", help="network to perturb (repeatable)")
    which.add_argument("--regions", nargs="+", metavar="REGION", help="region names or indices to perturb")
    parser.add_argument(
        "--change", help="scale:A, silence, zero or couple:C (default: scale:0.5; attribution: silence)"
    )
    parser.add_argument(
        "--task", action="append", metavar="NAME", help="task to answer (default: every stored task)"
    )
    parser.add_argument("--attribute", metavar="TASK", help="rank networks or regions for this task instead")
    parser.add_argument("--by", choices=("network", "region"), default="network", help="attribution unit")
    parser.add_argument(
        "--repeats", type=positive_int, default=1, metavar="N", help="noise seeds averaged (attribution)"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed")
    parser.add_argument("--png", metavar="OUT.png", help="draw the result on the brain into this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --png file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")


def run(args: argparse.Namespace) -> int:
    from fmrilm.logs import library_warnings, no_library_progress_bars

    with library_warnings(verbose=False), no_library_progress_bars():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from fmrilm.chat_cli import _load, _processor_config
    from fmrilm.perturb import Change, select_regions

    attributing = args.attribute is not None
    if not attributing and not (args.network or args.regions):
        raise FmriInputError(
            "Say what to perturb",
            fix="pass --network NAME or --regions R [R ...], or --attribute TASK to rank",
        )
    if attributing and (args.network or args.regions):
        raise FmriInputError(
            "--attribute perturbs every network (or region) in turn, so it takes no --network or --regions",
            fix="leave --network/--regions out, or leave --attribute out",
        )
    if args.png is not None and Path(args.png).suffix.lower() != ".png":
        raise FmriInputError("--png must name a .png file", file=args.png, fix="e.g. --png perturbation.png")
    if args.png is not None and Path(args.png).exists() and not args.overwrite:
        raise FmriInputError(
            "--png names a file that already exists",
            file=args.png,
            fix="pass --overwrite or another file name",
        )
    change = Change.parse(args.change or ("silence" if attributing else "scale:0.5"))
    config = _processor_config(args.model)
    scan = _load(args.scan, args, config)  # bad input fails before the model loads
    if not attributing:
        select_regions(scan.atlas, _regions(args.regions), args.network)  # names checked before loading

    import torch

    from fmrilm.chat_cli import _device_map
    from fmrilm.model.modeling import FmriLM

    model = FmriLM.from_pretrained(args.model, device_map=_device_map(args.device, torch)).eval()
    if attributing:
        frame = model.attribute(
            scan, args.attribute, args.by, change=change, seed=args.seed, repeats=args.repeats, progress=True
        )
        print(f"attribution of '{args.attribute}' for {scan.scan_id} ({change}, by {args.by}):")
        print(_table(frame))
        if args.png:
            values = _region_effects(frame, scan.atlas, args.by)
            title = f"{args.attribute}: effect of {change} per {args.by}"
            draw(values, scan.atlas, args.png, title)
        return 0
    frame = model.perturb(scan, _regions(args.regions), args.network, change, tasks=args.task, seed=args.seed)
    regions = frame.attrs["regions"]
    shown = ", ".join(regions[:6]) + (f" and {len(regions) - 6} more" if len(regions) > 6 else "")
    print(f"{scan.scan_id}: {change} on {len(regions)} region(s) ({shown})")
    print(_table(frame))
    if args.png:
        values = connectivity_change(scan.timeseries, frame.attrs["scan"].timeseries)
        top = frame.loc[frame["delta"].abs().idxmax()]
        title = f"{change}: largest change {top['task']} '{top['option']}' {top['delta']:+.3f}"
        draw(values, scan.atlas, args.png, title)
    return 0


def _table(frame: Any) -> str:
    """Probabilities to 4 decimals, changes with their sign."""
    signed = {c: (lambda v: f"{v:+.4f}") for c in ("delta",) if c in frame.columns}
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4f}", formatters=signed)


def _regions(items: list[str] | None) -> list[Any] | None:
    if items is None:
        return None
    return list(items)  # names; all-digit names that are not labels are read as indices by select_regions


def connectivity_change(before: Any, after: Any) -> Any:
    """Per region: mean absolute change of its correlation with every other region."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), np.errstate(invalid="ignore", divide="ignore"):
        a = np.nan_to_num(np.corrcoef(np.asarray(before, np.float64).T))
        b = np.nan_to_num(np.corrcoef(np.asarray(after, np.float64).T))
    diff = np.abs(b - a)
    np.fill_diagonal(diff, 0.0)
    return diff.sum(1) / max(len(diff) - 1, 1)


def _region_effects(frame: Any, atlas: Any, by: str) -> Any:
    import numpy as np

    if by == "region":
        effect = dict(zip(frame["region"], frame["effect"], strict=True))
        return np.asarray([effect[label] for label in atlas.labels])
    effect = dict(zip(frame["network"], frame["effect"], strict=True))
    return np.asarray([effect[n] for n in atlas.networks])


def draw(values: Any, atlas: Any, png: str, title: str) -> Path:
    """Markers at the regions' MNI coordinates coloured by ``values`` (nilearn), saved with the Agg backend."""
    import os
    import secrets

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from nilearn import plotting

    out = Path(png)
    if not out.parent.exists():
        raise FmriInputError("The folder of --png does not exist", file=out.parent, fix="create it first")
    values = np.asarray(values, dtype=float)
    vmax = float(values.max()) if values.size and values.max() > 0 else 1.0
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}.png")
    fig = plt.figure(figsize=(10, 3.6))
    try:
        display = plotting.plot_markers(
            values,
            np.asarray(atlas.coords),
            node_size=25,
            node_cmap="viridis",
            node_vmin=0.0,
            node_vmax=vmax,
            display_mode="ortho",
            title=title,
            figure=fig,
        )
        fig.savefig(tmp, dpi=110)
        display.close()
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out}")
    return out
