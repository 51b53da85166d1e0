"""isol8's engine: runs untrusted code in hardened Docker containers. No UI code lives here."""

__version__ = "0.1.0"
