"""Re-render the Markdown of committed results from their JSON alone (nothing is re-run).

    python benchmarks/render_results.py benchmarks/results/tv-horse.json [...]

Refuses (exit code 2) a table whose runs come from different training code (source hashes).
"""

from __future__ import annotations

import sys

from semiseg.bench.render import main

if __name__ == "__main__":
    sys.exit(main())
