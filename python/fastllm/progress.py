"""Progress on stderr for work that may take a while (loading a model's weights), shown only on a
terminal and only once the work has taken over DELAY_S seconds: a quick load prints nothing, and
a log file never gets a bar's carriage returns."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

DELAY_S = 1.0


def tensors(items: Mapping[str, Any], desc: str, quiet: bool = False) -> Iterator[tuple[str, Any]]:
    """(name, TensorInfo) of items, advancing a bar over their bytes as each is taken. The bar
    disappears when done (the caller says what was loaded)."""
    from tqdm import tqdm

    stream = sys.stderr
    show = not quiet and stream is not None and stream.isatty()
    total = sum(int(t.data.nbytes) for t in items.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=stream, delay=DELAY_S,
              leave=False, disable=not show) as bar:
        for name, info in items.items():
            yield name, info
            bar.update(int(info.data.nbytes))
