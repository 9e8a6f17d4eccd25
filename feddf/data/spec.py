"""Dataset specs: `name[:split][[start:stop]]` — pure parsing, no I/O.

    python -c "from feddf.data.spec import parse_spec; print(parse_spec('fashion-mnist:test[:5000]'))"

Slices are part of the spec so that a public split (`test[:5000]`, e.g. the DCGAN's training data) and the held-out
evaluation split (`test[5000:]`) can never overlap by accident.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from feddf.errors import FeddfError

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)(?::(?P<split>[A-Za-z0-9_+\-]+))?(?:\[(?P<slice>[^\]]*)\])?$")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str | None = None
    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        s = self.name + (f":{self.split}" if self.split else "")
        if self.start is not None or self.stop is not None:
            s += f"[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"
        return s

    def slice(self) -> slice:
        return slice(self.start, self.stop)


def parse_spec(spec: str) -> DatasetSpec:
    """'fashion-mnist:test[:5000]' -> DatasetSpec('fashion-mnist', 'test', None, 5000)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise FeddfError(f"bad dataset spec {spec!r}: use name[:split][[start:stop]], e.g. fashion-mnist:test[:5000]")
    start = stop = None
    if m.group("slice") is not None:
        parts = m.group("slice").split(":")
        if len(parts) != 2:
            raise FeddfError(f"bad slice in {spec!r}: use [start:stop], e.g. test[:5000] or test[5000:]")
        try:
            start = int(parts[0]) if parts[0].strip() else None
            stop = int(parts[1]) if parts[1].strip() else None
        except ValueError:
            raise FeddfError(f"bad slice in {spec!r}: start and stop must be integers") from None
    return DatasetSpec(m.group("name").lower(), m.group("split"), start, stop)
