"""Dates given as text: ISO 8601, or a common day/month format detected from the values.

A column's format is decided once, at training, and stored in its column spec
(``ColumnSpec.date_format``; None means ISO 8601), so serving and batch scoring parse the
values exactly as training did. Models saved before formats existed have none: ISO.

Detected formats (four-digit years, an optional `` HH:MM`` or `` HH:MM:SS`` time):

- ``MM/DD/YYYY`` or ``DD/MM/YYYY``, and the same with ``-``: both orders are in common use,
  so the values decide (a first field above 12 means day first, a second field above 12
  means month first). When every value reads both ways (all fields at most 12) the order is
  **ambiguous** and prepare stops, asking for ``data.column_types: {col: {kind: datetime,
  format: ...}}``: a guess would silently swap days and months.
- ``DD.MM.YYYY``: the dotted form is day first wherever it is used; ``MM.DD.YYYY`` is not
  guessed (declare it).

A format is accepted when at least 95% of the distinct values parse with it (the same share
ISO detection asks for) and, of two orders, it parses more of them; the rest are invalid
values (missing at training, refused at serving).
"""

from __future__ import annotations

import re

import pandas as pd

SHARE = 0.95
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}")
_TIME = r"(?: \d{1,2}:\d{2}(?P<seconds>:\d{2})?)?"
# (pattern, candidate orders): each candidate is a strftime format without the time part.
_FAMILIES = (
    (re.compile(rf"^\d{{1,2}}/\d{{1,2}}/\d{{4}}{_TIME}$"), ("%m/%d/%Y", "%d/%m/%Y")),
    (re.compile(rf"^\d{{1,2}}-\d{{1,2}}-\d{{4}}{_TIME}$"), ("%m-%d-%Y", "%d-%m-%Y")),
    (re.compile(rf"^\d{{1,2}}\.\d{{1,2}}\.\d{{4}}{_TIME}$"), ("%d.%m.%Y",)),
)
_READABLE = {"%m": "MM", "%d": "DD", "%Y": "YYYY", "%H": "HH", "%M": "MM", "%S": "SS"}


class AmbiguousDates(ValueError):
    """Every value reads as a date in more than one day/month order."""

    def __init__(self, formats: list[str], example: str) -> None:
        self.formats, self.example = formats, example
        super().__init__(f"{example!r} reads as {' and as '.join(map(readable, formats))}")


def readable(fmt: str) -> str:
    """'%d.%m.%Y' -> 'DD.MM.YYYY' (for messages)."""
    for directive, word in _READABLE.items():
        fmt = fmt.replace(directive, word)
    return fmt


def parse(values: pd.Series, fmt: str | None) -> pd.Series:
    """Text dates -> naive UTC timestamps; unparseable values become NaT.

    ``utc=True`` because ISO text with mixed offsets otherwise raises even with
    errors="coerce". A strftime format is read as given (no offsets).
    """
    if fmt is None:
        parsed = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
        return parsed.dt.tz_localize(None)
    return pd.to_datetime(values.astype("string").str.strip(), errors="coerce", format=fmt)


def _share_parsed(values: pd.Series, fmt: str | None) -> float:
    return float(parse(values, fmt).notna().mean())


def detect(values: pd.Series) -> tuple[bool, str | None]:
    """(is a date column, its format: None for ISO 8601) of non-missing text values.

    Raises:
        AmbiguousDates: the values are dates, but their day/month order cannot be told.
    """
    distinct = pd.Series(pd.unique(values.astype(str).str.strip()), dtype=object)
    if distinct.empty:
        return False, None
    if distinct.head(1000).str.match(ISO).mean() >= SHARE:
        return _share_parsed(distinct.head(1000), None) >= SHARE, None
    for pattern, orders in _FAMILIES:
        matches = distinct.str.extract(pattern)
        matched = distinct[distinct.str.match(pattern)]
        if len(matched) < SHARE * len(distinct):
            continue
        has_time = matched.str.contains(":").any()
        seconds = matches["seconds"].notna().any()
        suffix = (" %H:%M:%S" if seconds else " %H:%M") if has_time else ""
        shares = {f + suffix: _share_parsed(distinct, f + suffix) for f in orders}
        best = max(shares.values())
        if best < SHARE:
            return False, None
        fits = [f for f, share in shares.items() if share == best]
        if len(fits) > 1:  # no value tells the orders apart
            raise AmbiguousDates(fits, str(matched.iloc[0]))
        return True, fits[0]
    return False, None
