"""`python3 -m orchestrate.agents supervisor`: print an agent's bundled source."""

from __future__ import annotations

import sys

from orchestrate.agents import bundle

if __name__ == "__main__":
    sys.stdout.write(bundle(sys.argv[1] if len(sys.argv) > 1 else "supervisor"))
