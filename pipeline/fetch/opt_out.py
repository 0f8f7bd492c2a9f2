"""Opt-out signals a photo's server sends with it: does ``X-Robots-Tag`` keep the photo out of the dataset?

Honoured by default, as img2dataset does (``noai``, ``noimageai``, ``noindex``,
``noimageindex``), plus ``none``, which the robots meta-tag specification defines as
``noindex, nofollow``.  ``nofollow``, ``noarchive``, ``nosnippet`` and the like are about
links, caches and search snippets, not about using the image, so they are not.

A header value is a comma-separated list of directives, optionally scoped to one crawler:
``X-Robots-Tag: otherbot: noindex, nofollow``.  Unscoped directives apply to everyone; scoped
ones only when the crawler named is ours (the product token of our User-Agent, ``exiflang``
by default), compared without regard to case.  Several headers, or several scopes in one,
are each read the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "none")

# Directives written "name: value", whose name is therefore not a crawler's.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def agent_token(user_agent: str) -> str:
    """The product token of a User-Agent string: ``exiflang/0.1 (+url)`` -> ``exiflang``."""
    return user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()


def opt_out(values: Iterable[str], directives: Iterable[str], agent: str) -> str | None:
    """``"X-Robots-Tag: <value>"`` for the first header value that opts out ``agent``, else None."""
    wanted = frozenset(d.strip().lower() for d in directives)
    if not wanted:
        return None
    for value in values:
        if wanted & _applying(value, agent.lower()):
            return f"X-Robots-Tag: {' '.join(value.split())[:200]}"
    return None


def _applying(value: str, agent: str) -> set[str]:
    """The directives of one header value that apply to ``agent``."""
    found: set[str] = set()
    scope: str | None = None  # None: every crawler
    for piece in value.split(","):
        name, colon, rest = piece.partition(":")
        name = name.strip().lower()
        if colon and name not in _VALUED and rest.strip():
            # "bot: directive" opens bot's scope, which runs to the next scope.
            scope, directive = name, rest.strip().lower()
        else:
            directive = name
        if scope is None or scope == agent:
            found.add(directive.split(":", 1)[0].strip())
    return found
