"""orchestrate's test suite.

unit/       no engine and no test bed: the pure core against real rules (a real vLLM wheel's
            parser, recorded real outputs, Kubernetes' scheduling rules), one folder per package
images/     what needs this machine's Docker Engine: the image recipes built for real, and
            checks run inside those images (SMG's own parser reading the router's argv)
bed/        the multi-host test bed (tests/testbed): real sshd, a dockerd per host, Ray, vLLM
support/    helpers the tests share (golden files, test images, the Kubernetes rules player)
fixtures/   recorded real outputs and inventories the tests read
testbed/    the test bed itself, and its own self-check
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
