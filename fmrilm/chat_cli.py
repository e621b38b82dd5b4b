"""`fmrilm chat`: talk with a saved fMRI-LM about one or more scans, in a terminal or one-shot with --message.

Scans are loaded (and bad input reported) before the model, so a wrong path or atlas fails in a second, not
after the model has loaded. Heavy imports (torch, transformers) stay inside `run`, so `fmrilm --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from fmrilm.errors import FmriInputError

EPILOG = """examples:
  fmrilm chat --model runs/demo/model --scan sub-0051456_rois_cc200.1D --tr 2.0
  fmrilm chat --model runs/demo/model --scan a.1D --scan b.1D --tr 2.0 --message "Compare these two scans."

in the conversation:
  /scan PATH [PATH ...]   attach scans to your next message (earlier scans stay in the conversation)
  /reset                  start over (the scans given on the command line are attached again)
  /help                   show these commands
  /quit                   leave (end of input, Ctrl-D, works too)
  Ctrl-C                  stop the answer being written (the conversation goes on); at the prompt, clear the line
  arrow keys              edit the line and recall earlier questions (readline)

Computed answers (--no-tools turns them off): "Which networks drive this prediction?" ranks the networks by
how much silencing each moves the answer (fmrilm.perturb.attribute); "What if the default mode network were
weaker?" (stronger, silenced) answers every task again with that network perturbed (fmrilm.perturb.perturb).
Only these wordings and close variants are recognised; everything else is answered by the LLM.

Library warnings (transformers, peft, ...) are kept out of the conversation: --verbose shows them on stderr,
--log-file FILE appends them to FILE.
"""

COMMANDS_HELP = "/scan PATH attaches another scan, /reset starts over, /help lists commands, /quit exits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="folder written by FmriLM.save_pretrained"
    )
    parser.add_argument(
        "--scan",
        action="append",
        default=[],
        metavar="FILE",
        help="scan to talk about (region table .1D/.csv/.tsv/.txt/.npy/.npz/.h5 or NIfTI); repeat for several",
    )
    parser.add_argument(
        "--atlas",
        help="built-in atlas name, centroids table (.csv) or labels image (.nii.gz) of the scans "
        "(default: the atlas saved with the model)",
    )
    parser.add_argument(
        "--tr", type=float, help="repetition time in seconds, when the scan file does not give it"
    )
    parser.add_argument("--message", "-m", help="ask this one question, print the answer and exit")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="answer length limit")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 (default) answers greedily"
    )
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ... or auto")
    parser.add_argument(
        "--no-stream", action="store_true", help="print each answer whole instead of streaming it"
    )
    parser.add_argument(
        "--no-tools",
        action="store_true",
        help="let the LLM answer attribution and what-if questions too, instead of computing them",
    )
    from fmrilm.logs import add_warning_options

    add_warning_options(parser)


def run(args: argparse.Namespace) -> int:
    from fmrilm.logs import no_library_progress_bars, warnings_as_asked

    with (
        warnings_as_asked(args),
        no_library_progress_bars(),
    ):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    config = _processor_config(args.model)
    scans = [_load(path, args, config) for path in args.scan]  # bad input fails before the model loads

    import torch

    from fmrilm.chat import ChatSession, print_stream
    from fmrilm.model.modeling import FmriLM

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = FmriLM.from_pretrained(args.model, device_map=_device_map(args.device, torch)).eval()
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {}
    session = ChatSession(
        model, max_new_tokens=args.max_new_tokens, tools=not getattr(args, "no_tools", False), **sampling
    )
    stream = None if args.no_stream else print_stream

    if args.message is not None:
        for scan in scans:
            session.attach(scan)
        _answer(session, args.message, stream, sys.stdout)
        return 0
    return _interactive(session, scans, args, config, stream)


# ------------------------------------------------------------------------------------------------ pieces
def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise FmriInputError(
            f"--max-new-tokens must be at least 1, got {args.max_new_tokens}",
            fix="pass --max-new-tokens 256, say",
        )
    if not (math.isfinite(args.temperature) and 0 <= args.temperature <= 100):
        raise FmriInputError(
            f"--temperature must be a number from 0 to 100, got {args.temperature}",
            fix="pass 0 for greedy answers or e.g. 0.7",
        )
    if args.tr is not None and not (math.isfinite(args.tr) and args.tr > 0):
        raise FmriInputError(
            f"--tr must be a positive number of seconds, got {args.tr}",
            fix="pass the TR in seconds, e.g. --tr 2.0",
        )
    if args.seed is not None and args.seed < 0:
        raise FmriInputError(f"--seed must not be negative, got {args.seed}", fix="pass e.g. --seed 0")


def _processor_config(model: str) -> Any:
    """The saved processor config when ``model`` is a local folder (its atlas is the default); else None.

    The folder is checked first (every JSON parses, weights are whole), so a broken download fails here with
    one sentence, before any scan or the model is loaded.
    """
    from fmrilm.model.processing import PROCESSOR_CONFIG_NAME, FmriProcessorConfig
    from fmrilm.safety import HUB_ID_HINT, check_model_folder, looks_like_hub_id

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / PROCESSOR_CONFIG_NAME).exists() and (path / "model" / PROCESSOR_CONFIG_NAME).exists():
            path = path / "model"  # a training output folder holds its model in model/
        check_model_folder(path)
        return FmriProcessorConfig.load(path)
    if path.exists():
        raise FmriInputError(
            "--model is a file, not a saved fmrilm model folder",
            fix="pass --model a folder written by FmriLM.save_pretrained",
            file=model,
        )
    if not looks_like_hub_id(str(model)):
        raise FmriInputError(
            "--model names no folder",
            fix=f"check the path (a folder written by FmriLM.save_pretrained); {HUB_ID_HINT}",
            file=model,
        )
    return None  # a hub id: from_pretrained looks in the local cache


def _load(path: str, args: argparse.Namespace, config: Any) -> Any:
    from fmrilm.chat import load_chat_scan

    return load_chat_scan(path, atlas=args.atlas, tr=args.tr, model=config)


def _device_map(device: str, torch: Any) -> Any:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if device == "cpu":
        return None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FmriInputError(
            f"--device {device} was asked for but no CUDA GPU is available", fix="use --device cpu"
        )
    return device


def _answer(session: Any, message: str, stream: Any, out: TextIO, prefix: str = "") -> str:
    out.write(prefix)
    out.flush()
    answer = session.ask(message, stream=stream)
    out.write("\n" if stream is not None else answer + "\n")
    out.flush()
    return answer


def _describe_part(part: dict[str, Any], processor: Any) -> str:
    n_windows = len(part["codes"])
    tokens = processor.n_brain_tokens(n_windows)
    return (
        f"'{part.get('scan_id', 'scan')}' ({n_windows} window{'s' * (n_windows != 1)}, {tokens} brain tokens)"
    )


def _interactive(session: Any, scans: list[Any], args: argparse.Namespace, config: Any, stream: Any) -> int:
    """Read questions and /commands from stdin until /quit or end of input; bad scans do not end the chat."""
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def attach_initial() -> None:
        for scan in scans:
            part = session.attach(scan)
            print(f"attached {_describe_part(part, session.processor)}", file=sys.stderr)

    print(f"fmrilm chat with {args.model}: type a question; {COMMANDS_HELP}.", file=sys.stderr)
    attach_initial()
    while True:
        try:
            line = input("you> " if tty else "")
        except EOFError:
            if tty:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:  # at the prompt: clear the line (leaving is /quit or Ctrl-D)
            print(file=sys.stderr)
            if not tty:
                return 130
            print("(/quit or Ctrl-D leaves)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            command = command.lower()
            if command in ("/quit", "/exit", "/q"):
                return 0
            if command == "/reset":
                session.reset()
                print("conversation reset", file=sys.stderr)
                attach_initial()
            elif command == "/scan":
                _attach_paths(session, rest, args, config)
            elif command == "/help":
                print(EPILOG.split("in the conversation:\n", 1)[1].rstrip(), file=sys.stderr)
            else:
                print(f"unknown command {command}: {COMMANDS_HELP}", file=sys.stderr)
            continue
        try:
            _answer(session, line, stream, sys.stdout, prefix="model> " if tty else "")
        except FmriInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:  # the answer is dropped; history and attached scans stay as they were
            sys.stdout.write("\n")
            sys.stdout.flush()
            print("(answer stopped; ask again or go on)", file=sys.stderr)


def _attach_paths(session: Any, rest: str, args: argparse.Namespace, config: Any) -> None:
    try:
        paths = shlex.split(rest)
    except ValueError:
        paths = [rest.strip()]
    if not paths:
        print("usage: /scan PATH [PATH ...]", file=sys.stderr)
        return
    for path in paths:
        try:
            part = session.attach(_load(path, args, config))
        except FmriInputError as exc:  # a bad file is reported and the conversation goes on
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"attached {_describe_part(part, session.processor)} to your next message", file=sys.stderr)
