"""orchestrate's test suite.

unit/       no engine and no test bed: the pure core against real rules (a real vLLM wheel's
            parser, recorded real outputs, Kubernetes' scheduling rules), one folder per package
bed/        the multi-host test bed (tests/testbed): real sshd, a dockerd per host, Ray, vLLM
images/     the image recipes, built for real on this machine's engine
support/    helpers the tests share (golden files, test images, the Kubernetes rules player)
fixtures/   recorded real outputs and inventories the tests read
testbed/    the test bed itself, and its own self-check
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
