"""What one trace holds while its spans wait for their owner (see :mod:`.assembler`).

Spans end children first, so a span usually arrives before the span above it. Until its
parent resolves, a span waits *unresolved* under its parent id; when an owner arrives, its
waiting subtree is taken out in one walk and joins it. Every span is placed once and taken
once, whatever else shares the trace.
"""

from __future__ import annotations

from chatter_otel.writeback.extract import Call, Owner

Links = dict[int, "int | None"]
Calls = dict[int, Call]


class OpenOwner:
    """An owner that arrived and is not finalized yet, with its subtree so far."""

    __slots__ = ("calls", "finalized", "links", "owner", "trace_id")

    def __init__(self, trace_id: int, owner: Owner) -> None:
        self.trace_id = trace_id
        self.owner = owner
        self.links: Links = {}
        self.calls: Calls = {}
        self.finalized = False

    def bind(self, message_id: str, conversation_id: str | None) -> None:
        """Gives an unbound owner the message its ``bind_message`` named."""
        owner = self.owner
        owner.message_id = message_id
        owner.conversation_id = owner.conversation_id or conversation_id
        owner.unbound = False


class TraceState:
    """The unresolved spans and the open owners of one trace."""

    __slots__ = ("binds", "calls", "children", "links", "owner_of")

    def __init__(self) -> None:
        self.links: dict[int, int] = {}
        """Unresolved span -> its parent id."""
        self.children: dict[int, set[int]] = {}
        """Span id (seen or not) -> its unresolved children."""
        self.calls: Calls = {}
        """The unresolved spans that carry usage."""
        self.owner_of: dict[int, OpenOwner] = {}
        """Spans resolved to an open owner (the owner span included)."""
        self.binds: dict[int, tuple[str, str | None]] = {}
        """Binds that arrived before the owner span they name."""

    @property
    def empty(self) -> bool:
        return not (self.links or self.owner_of or self.binds)

    def knows(self, span_id: int) -> bool:
        """The span is already here (waiting, or resolved to an open owner)."""
        return span_id in self.links or span_id in self.owner_of

    def wait(self, span_id: int, parent_id: int, call: Call | None) -> None:
        """Parks a span under its parent until that parent resolves."""
        self.links[span_id] = parent_id
        self.children.setdefault(parent_id, set()).add(span_id)
        if call is not None:
            self.calls[span_id] = call

    def subtree(
        self, span_id: int, parent_id: int | None, call: Call | None
    ) -> tuple[Links, Calls]:
        """The arriving span and its unresolved subtree, taken out of the waiting state."""
        links: Links = {span_id: parent_id}
        calls: Calls = {span_id: call} if call is not None else {}
        stack = [span_id]
        while stack:
            node = stack.pop()
            for child in self.children.pop(node, ()):
                if self.links.get(child) != node:
                    continue  # re-linked or resolved since
                links[child] = self.links.pop(child)
                found = self.calls.pop(child, None)
                if found is not None:
                    calls[child] = found
                stack.append(child)
        return links, calls

    def join(self, target: OpenOwner, links: Links, calls: Calls) -> None:
        """Resolves a taken-out subtree to an open owner."""
        target.links.update(links)
        target.calls.update(calls)
        owner_of = self.owner_of
        for span_id in links:
            owner_of[span_id] = target

    def release(self, target: OpenOwner) -> None:
        """Forgets the spans of an owner being finalized."""
        owner_of = self.owner_of
        for span_id in target.links:
            if owner_of.get(span_id) is target:
                del owner_of[span_id]

    def forget(self, span_id: int) -> tuple[int, Call] | None:
        """Drops an aged unresolved span; its waiting children now wait on its parent.

        Returns its parent id and its call when it carried usage (now lost)."""
        parent_id = self.links.pop(span_id, None)
        if parent_id is None:
            return None
        siblings = self.children.get(parent_id)
        if siblings is not None:
            siblings.discard(span_id)
            if not siblings:
                del self.children[parent_id]
        for child in self.children.pop(span_id, ()):
            if self.links.get(child) == span_id:
                self.links[child] = parent_id
                self.children.setdefault(parent_id, set()).add(child)
        call = self.calls.pop(span_id, None)
        return None if call is None else (parent_id, call)
