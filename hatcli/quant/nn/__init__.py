"""Quantized module families: ``qat`` (fake-quantized float) and ``quantized`` (integer)."""
