"""lowlux: restore extremely dark raw photos in real time."""

__version__ = "0.1.0"
