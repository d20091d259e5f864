"""edge-inspector: production-line edge inspection daemon."""

__version__ = "0.1.0"

# Model bundles record the bundle format version; the runtime refuses bundles it cannot read.
BUNDLE_FORMAT_VERSION = 1
