"""What every enforcement target does: plan, apply, check, over one shape of state.

A target's state is a set of :class:`Item` objects (a role, a grant, a view, an LF-tag on a
column, an audience file...), each with a key (what it is) and a spec (what it must look
like). The desired items are compiled from the policy by pure functions; the actual items
are read from the target. :func:`diff` turns the two into :class:`Change` objects:

* ``add``: desired, absent;
* ``change``: present with another spec (a view altered by hand, a file built from an older
  policy);
* ``remove``: present, governed by the policy, but not desired (a grant made behind its
  back).

``plan`` prints the changes, ``apply`` makes them (the target knows how, from each item's
payload) and ``check`` reports them as drift. A target never touches what it does not govern
(its markers, prefixes and governed schemas say what that is).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cdc.errors import CdcError

__all__ = [
    "Change",
    "GovernanceError",
    "Item",
    "Plan",
    "Target",
    "diff",
]


class GovernanceError(CdcError):
    """A target refused a change, or cannot hold what the policy asks for."""


@dataclass(frozen=True)
class Item:
    """One governed object of a target.

    Attributes:
        kind: the sort of object (``role``, ``grant``, ``view``, ``lf-tag``...); orders apply.
        key: which one (unique within its kind).
        spec: what it must look like; two items of the same kind and key with different specs
            differ.
        payload: what the target needs to create or remove it (statements, request dicts);
            not compared.
        readable: whether ``spec`` means something to a reader (False for a fingerprint).
    """

    kind: str
    key: str
    spec: str = ""
    payload: Any = field(default=None, compare=False, hash=False)
    readable: bool = field(default=True, compare=False, hash=False)

    @property
    def ident(self) -> tuple[str, str]:
        """``(kind, key)``."""
        return self.kind, self.key


@dataclass(frozen=True)
class Change:
    """One difference between the desired and the actual state."""

    action: Literal["add", "change", "remove"]
    item: Item
    """The desired item (add, change) or the actual one (remove)."""
    was: Item | None = None
    """The actual item a change replaces."""

    def line(self) -> str:
        """One line: ``+ grant cdc_analyst SELECT gold.daily_revenue``."""
        sign = {"add": "+", "change": "~", "remove": "-"}[self.action]
        text = f"{sign} {self.item.kind} {self.item.key}"
        if self.action == "change" and self.was is not None:
            if self.item.readable:
                text += f" (is: {self.was.spec or 'other'}; policy: {self.item.spec or 'other'})"
            elif self.was.readable:
                text += f" ({self.was.spec})"
            else:
                text += " (defined otherwise by the policy now)"
        elif self.action == "remove" and self.item.spec:
            text += f" ({self.item.spec})"
        return text


def diff(desired: Iterable[Item], actual: Iterable[Item], order: Sequence[str]) -> list[Change]:
    """The changes that turn ``actual`` into ``desired``.

    Args:
        desired: the items the policy asks for.
        actual: the governed items the target holds.
        order: the item kinds in creation order: additions and changes follow it, removals
            run first and in reverse (a grant goes before its role).

    Returns:
        Removals, then additions and changes.
    """
    want = {i.ident: i for i in desired}
    have = {i.ident: i for i in actual}
    rank = {kind: n for n, kind in enumerate(order)}

    def position(change: Change) -> tuple[int, str]:
        return rank.get(change.item.kind, len(rank)), change.item.key

    removes = [Change("remove", have[k]) for k in have if k not in want]
    updates = [Change("add", want[k]) for k in want if k not in have]
    updates += [
        Change("change", want[k], have[k])
        for k in want
        if k in have and want[k].spec != have[k].spec
    ]
    return sorted(removes, key=position, reverse=True) + sorted(updates, key=position)


@dataclass(frozen=True)
class Plan:
    """What a target would change, and notes (tables not there yet, limits of the target)."""

    target: str
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()
    script: tuple[str, ...] = ()
    """Statements rendered without comparing with the target (Snowflake's plan)."""

    def lines(self) -> list[str]:
        """The plan for the terminal: one line per change, the script, then the notes."""
        if self.script:
            head = f"{self.target}: {len(self.script)} statement(s)"
        elif self.changes:
            head = f"{self.target}: {len(self.changes)} change(s)"
        else:
            head = f"{self.target}: in sync with the policy"
        return [
            head,
            *(f"  {c.line()}" for c in self.changes),
            *(f"  {sql}" for sql in self.script),
            *(f"  note: {n}" for n in self.notes),
        ]


class Target(ABC):
    """One enforcement point: compiles the policy, reads the actual state, applies changes.

    Subclasses supply :meth:`desired`, :meth:`actual` and :meth:`apply_changes`; the base
    class diffs them. Targets are context managers (entering connects).
    """

    name: str
    order: tuple[str, ...] = ()
    """Item kinds in creation order (see :func:`diff`)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - most targets hold nothing to release
        """Release connections (default: nothing to release)."""

    @abstractmethod
    def desired(self) -> list[Item]:
        """The items the policy asks for (pure compilation, given what the target holds)."""

    @abstractmethod
    def actual(self) -> list[Item]:
        """The governed items the target holds now."""

    def notes(self) -> list[str]:
        """Remarks for the plan: tables not in the target yet, what the target cannot do."""
        return []

    @abstractmethod
    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Make the changes, in order.

        Raises:
            GovernanceError: the target refused one (nothing is half-applied where the target
                has transactions).
        """

    def plan(self) -> Plan:
        """What :meth:`apply` would change."""
        changes = diff(self.desired(), self.actual(), self.order)
        return Plan(self.name, tuple(changes), tuple(self.notes()))

    def check(self) -> Plan:
        """The drift between the policy and the target (what :meth:`apply` would change)."""
        return self.plan()

    def apply(self) -> Plan:
        """Make the target match the policy; returns what was changed."""
        planned = self.plan()
        if planned.changes:
            self.apply_changes(planned.changes)
        return planned
