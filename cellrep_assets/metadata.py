"""Helpers to turn library results into Dagster metadata (PNG pictures, tables)."""

from __future__ import annotations

import base64

import dagster as dg


def png_md(png: bytes, alt: str) -> dg.MetadataValue:
    """Embed a PNG in Markdown metadata, which the Dagster UI renders inline."""
    b64 = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{b64})")


def counts_table(counts: dict[str, int], key: str = "reason", value: str = "cells") -> dg.MetadataValue:
    """A two-column Markdown table of counts."""
    lines = [f"| {key} | {value} |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))
