"""neural-eigenseg: unsupervised semantic segmentation by neural eigenfunctions."""

__version__ = "0.3.0"
