"""Training and evaluation of lowlux's own weights (synthetic dark raws, SID when available).

Needs the ``train`` extras (pytorch-msssim, scikit-image, opencv-python-headless for the
classical baseline); inference never imports this package.
"""
