"""`accelerate launch harness/revive.py --unlearned ... --out ...`: the sharded attack.

Takes the same options as `harness revive`; each Accelerate process revives its share of layers.
"""

import sys
from pathlib import Path

# Run as a script, Python puts harness/ itself first on the path, where its modules would shadow
# top-level ones; put the repository root there instead.
_package_dir = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _package_dir]
sys.path.insert(0, str(_package_dir.parent))

from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["revive", *sys.argv[1:]]))
