"""Image builds: the shared Debian base, the runtime layers with the agent, content hashes."""

from engine.images.builder import ImageStatus, ensure_images, image_ready

__all__ = ["ImageStatus", "ensure_images", "image_ready"]
