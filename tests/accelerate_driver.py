"""Run several `fmrilm` commands in each process of one `accelerate launch` (tests/test_scale_out.py).

    accelerate launch --num_processes 2 --cpu tests/accelerate_driver.py COMMANDS.json SAVES.log

``COMMANDS.json`` is a list of argument lists (``["train", "align", ...]``); each is run by `fmrilm.cli.main` in
turn, so the processes pay for their imports once. Every model save (`FmriLM.save_pretrained`, the adapters of
`fmrilm finetune`) appends ``RANK PATH`` to ``SAVES.log``, so the test can see which process wrote what.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    commands_file, saves_log = sys.argv[1], sys.argv[2]
    import fmrilm.train.finetune as finetune

    from fmrilm.cli import main as cli_main
    from fmrilm.model.modeling import FmriLM

    rank = os.environ.get("RANK", "0")

    def record(path) -> None:
        with open(saves_log, "a") as fh:  # one short line per append: not interleaved between processes
            fh.write(f"{rank} {path}\n")

    save_pretrained, save_adapters = FmriLM.save_pretrained, finetune.save_adapters

    def recording_save_pretrained(self, path, *args, **kwargs):
        record(path)
        return save_pretrained(self, path, *args, **kwargs)

    def recording_save_adapters(model, out_dir, info):
        record(out_dir)
        return save_adapters(model, out_dir, info)

    FmriLM.save_pretrained = recording_save_pretrained
    finetune.save_adapters = recording_save_adapters
    with open(commands_file) as fh:
        commands = json.load(fh)
    for argv in commands:
        code = cli_main(argv)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
