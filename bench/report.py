"""BENCHMARKS.md, where every bench script writes its section: one section between its two markers."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, start: str, end: str, new: str) -> None:
    """Put `new` (which begins with `start` and ends with `end`) where the report has that section, or
    append it; the other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text)
