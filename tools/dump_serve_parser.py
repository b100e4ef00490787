"""Run INSIDE an image with vLLM installed: build the real `vllm serve` parser and print its options.

Used by tests/unit/core/test_vllm_versions.py against orchestrate/vllm-cpu:0.32.0; its output is committed in
tests/fixtures/vllm/vllm-0.32.0-serve-parser.json.
"""

import json
import sys

from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

p = FlexibleArgumentParser(prog="vllm")
sp = ServeSubcommand().subparser_init(p.add_subparsers())
out = []
for a in sp._actions:
    out.append(
        {
            "options": list(a.option_strings),
            "dest": a.dest,
            "nargs": a.nargs,
            "choices": None
            if a.choices is None
            else [c if isinstance(c, (str, int, float, type(None))) else repr(c) for c in a.choices],
        }
    )
json.dump(out, sys.stdout, indent=1)
