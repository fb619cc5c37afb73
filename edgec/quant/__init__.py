"""Quantization: calibration and integer-only kernels (I-ViT: ``intops``, ``ivit``)."""
