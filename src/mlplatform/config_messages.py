"""One line for a params.yaml validation error: the user's key path and what was expected.

Pydantic reports every union branch it tried and puts branch names into error locations;
this turns that into the key path as written in the file and the most useful message.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

_EXPECT = {
    "missing": "is required but missing",
    "extra_forbidden": "is not a known key",
}


_SCALARS = {"str", "int", "float", "bool", "none"}


def _locate(loc: tuple, raw: Any, missing: bool) -> tuple[tuple, tuple, str | None, Any]:
    """Map a pydantic error location onto the user's file.

    Pydantic puts the name of each union branch it tried into ``loc`` (``str``,
    ``function-after[..., DistributionSpec]``...). Walking the raw input keeps only real keys.

    Returns:
        (path of the union or the key, full key path, union branch or None, value there).
    """
    path: list[str] = []
    group: tuple | None = None
    branch: str | None = None
    node = raw
    at_group = raw
    for i, part in enumerate(loc):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
            path.append(str(part))
        elif missing and i == len(loc) - 1:
            path.append(str(part))  # a missing key is not in the input by definition
        elif branch is None:
            group, branch, at_group = tuple(path), str(part), node
    full = tuple(path)
    return (group if group is not None else full), full, branch, at_group


def _scalar_branch(branch: str | None) -> bool:
    return branch in _SCALARS or str(branch).startswith("literal[")


def _branch_name(branch: str) -> str:
    return branch.rstrip("]").split(",")[-1].strip() if "[" in branch else branch


def _describe(items: list[tuple[dict, tuple, str | None, Any]]) -> str:
    _, _, branch, value = items[0]
    if branch is not None:
        # Keep the branches that match the shape of what the user wrote.
        shaped = [i for i in items if (not _scalar_branch(i[2])) == isinstance(value, dict)]
        items = shaped or items
    err, full, _, _ = max(items, key=lambda i: len(i[0]["loc"]))
    where = ".".join(full) or "(top level)"
    if err["type"] in _EXPECT:
        return f"{where} {_EXPECT[err['type']]}"
    if len(items) > 1 and len({len(i[0]["loc"]) for i in items}) == 1:
        names = sorted({_branch_name(str(i[2])) for i in items})
        msg = f"not a valid value (expected one of: {', '.join(names)})"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    if shown and repr(got) in msg:  # the message quotes the value already
        shown = ""
    return f"{where}: {msg}{shown}"


def describe(exc: ValidationError, raw: Any) -> str:
    """The first problem of a validation error, plus how many more there are."""
    groups: dict[tuple, list] = {}
    for e in exc.errors():
        group, full, branch, value = _locate(e["loc"], raw, e["type"] == "missing")
        groups.setdefault(group, []).append((e, full, branch, value))
    first = next(iter(groups.values()))
    more = f" (and {len(groups) - 1} more)" if len(groups) > 1 else ""
    return f"{_describe(first)}{more}"
