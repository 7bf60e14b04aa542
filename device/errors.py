"""The exception hierarchy every edgewatch component raises.

Each message is written for the person at the terminal: it says what is wrong and what
to do about it. The CLI prints ``str(error)`` and exits non-zero, so no traceback is
needed to act on one of these.
"""

from __future__ import annotations


class EdgewatchError(Exception):
    """Base of every error edgewatch raises on purpose."""


class ConfigError(EdgewatchError):
    """A device config file is missing, unreadable or invalid."""


class BundleError(EdgewatchError):
    """A model bundle (.ewm) cannot be used; subclasses say why."""


class BundleFormatError(BundleError):
    """The file is not a readable zip, or a member is not what its name promises."""


class BundleMemberError(BundleError):
    """The zip holds members other than manifest.json, model.tflite and manifest.sig."""


class BundleSizeError(BundleError):
    """The bundle or one of its members is larger than the configured cap."""


class ManifestError(BundleError):
    """manifest.json is not valid JSON or does not follow the manifest schema."""


class ModelIntegrityError(BundleError):
    """model.tflite does not match the sha256 or size that the manifest states."""


class SignatureMissingError(BundleError):
    """A public key is configured but the bundle carries no manifest.sig."""


class SignatureInvalidError(BundleError):
    """manifest.sig does not verify against the configured public key."""


class BundleTaskError(BundleError):
    """The bundle's task is not the one the pipeline that loads it needs."""


class ModelMismatchError(BundleError):
    """The interpreter's tensors differ from what the manifest promises."""


class BundleIncompatibleError(BundleError):
    """The bundle is valid but cannot replace the model of the pipelines that run its
    name: input shape, output count or labels do not fit their configuration."""


class ModelStoreError(EdgewatchError):
    """The on-device model store has no such model or version, or cannot be written."""


class RuntimeUnavailableError(EdgewatchError):
    """No TFLite interpreter package (ai-edge-litert, tflite-runtime, tensorflow) imports."""


class EdgeTpuUnavailableError(EdgewatchError):
    """The config requires the Edge TPU but its delegate cannot be loaded."""


class SourceError(EdgewatchError):
    """A stream source cannot be opened or read."""


class SnapshotError(EdgewatchError):
    """An image cannot be encoded as a JPEG within the size it must not exceed."""


class DatasetError(EdgewatchError):
    """A training or evaluation data folder does not follow the expected layout."""


class MissingExtraError(EdgewatchError):
    """A workstation command needs an optional dependency that is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"this command needs {package}, which is not installed: "
            f"pip install 'edgewatch[{extra}]'"
        )
        self.package = package
        self.extra = extra
