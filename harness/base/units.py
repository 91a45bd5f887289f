"""Sizes in bytes, and times as the figures record them."""

KIB = 1024
MIB = 1024 * KIB


def ms(seconds: float, digits: int = 1) -> float:
    """``seconds`` in milliseconds, rounded to ``digits`` for a figure."""
    return round(seconds * 1000, digits)
