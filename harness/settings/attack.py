"""The attack stage's settings: an attack entry of the matrix (the revival family's own params are
harness.attack.revival.settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.layout import check_label


@dataclass
class AttackEntry:
    """One attack of the matrix: a registered name (nms, quant4, ...) or `package.module:function`,
    and its params."""

    attack: str
    name: str | None = None
    """The column's label (default: the attack's name)."""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.attack.rpartition(":")[2].replace("_", "-")
        check_label(self.name, "name")
