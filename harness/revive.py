"""`accelerate launch harness/revive.py --unlearned ... --out ...`: the sharded revival attack.

Takes the same options as `harness revive`; each Accelerate process revives its share of layers.
No module directly under harness/ shares its name with a standard or installed top-level module,
so running this file as a script (which puts harness/ first on the path) shadows nothing.
"""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["revive", *sys.argv[1:]]))
