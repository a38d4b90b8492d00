"""Sizes as people read them: one formatter for every message that names a byte count."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units, ``B`` to ``TiB``).

    Example:
        >>> format_bytes(512), format_bytes(3 * 2**30)
        ('512 B', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
