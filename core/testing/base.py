"""What every conformance suite shares: the base class is not collected, its subclasses are."""
from __future__ import annotations

from typing import Any

__all__ = ["ContractSuite"]


class ContractSuite:
    """Subclass one of the suites, name your implementation, and pytest runs every check."""

    __test__ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True
