"""Loss terms of query learning, one module each; :class:`Terms` holds every term's options.

To add a term: write ``terms/<name>.py`` (a dataclass following :class:`~qkt_flower.qkt.terms.base.Term`),
add it as a field here, and list its name in a phase's ``terms`` (``conf/method/*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from qkt_flower.errors import ConfigError
from qkt_flower.qkt.terms.base import LossFn, Outputs, Term
from qkt_flower.qkt.terms.ce import CrossEntropy
from qkt_flower.qkt.terms.feature import FeatureDistillation
from qkt_flower.qkt.terms.keep import KeepDistillation
from qkt_flower.qkt.terms.query import QueryDistillation


@dataclass
class Terms:
    """Every loss term's options, by the name a phase lists it under."""

    ce: CrossEntropy = field(default_factory=CrossEntropy)
    query: QueryDistillation = field(default_factory=QueryDistillation)
    keep: KeepDistillation = field(default_factory=KeepDistillation)
    feature: FeatureDistillation = field(default_factory=FeatureDistillation)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names a phase may list."""
        return tuple(f.name for f in fields(cls))

    def get(self, name: str) -> Term:
        """The term called ``name``."""
        return getattr(self, name)

    def check(self) -> None:
        """Every term's :meth:`check`, keys prefixed with the term's name."""
        for name in self.names():
            try:
                self.get(name).check()
            except ConfigError as err:
                raise err.under(name) from None


__all__ = [
    "CrossEntropy",
    "FeatureDistillation",
    "KeepDistillation",
    "LossFn",
    "Outputs",
    "QueryDistillation",
    "Term",
    "Terms",
]
