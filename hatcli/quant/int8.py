"""The int8 grid every stage quantizes to: symmetric, zero point 0, range [-128, 127].

QAT's fake quantization, the integer modules and the exported graphs all take their
bounds from here.
"""

from __future__ import annotations

QUANT_MIN = -128
"""The least int8 value."""

QUANT_MAX = 127
"""The greatest int8 value."""

ABS_MAX = -QUANT_MIN
"""The largest ``|q|`` of an int8 value (128): what bounds sums of int8 products."""

HALF_RANGE = (QUANT_MAX - QUANT_MIN) / 2
"""127.5: a symmetric scale is ``max|x| / HALF_RANGE``."""

UINT8_OFFSET = -QUANT_MIN
"""128: an int8 ``q`` carried as the uint8 ``q + UINT8_OFFSET`` (zero point 128)."""
