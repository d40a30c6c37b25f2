#!/usr/bin/env python3
"""Regenerate the generated parts of the docs from the code (the tests compare them):
docs/data-keys.md, the seed table in docs/seed-audit.md, and docs/calibration.md.

    .venv/bin/python tools/regen_docs.py
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vlmfleet import calibration  # noqa: E402
from vlmfleet.catalog import vllm_version  # noqa: E402
from vlmfleet.report import seed_markdown  # noqa: E402
from vlmfleet.seed import seed_rows  # noqa: E402


def main() -> int:
    docs = ROOT / "docs"
    subprocess.run([sys.executable, "-m", "vlmfleet.docs"], check=True, cwd=ROOT)  # writes docs/data-keys.md
    audit = docs / "seed-audit.md"
    table = seed_markdown(seed_rows(vllm_version("0.8.2")))
    text = re.sub(r"(<!-- seed-table:begin -->\n)(.*?)(<!-- seed-table:end -->)",
                  lambda m: m.group(1) + table + m.group(3), audit.read_text(), flags=re.S)
    audit.write_text(text)
    (docs / "calibration.md").write_text(calibration.markdown(calibration.rows(ROOT / "tests/fixtures/vllm-logs")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
