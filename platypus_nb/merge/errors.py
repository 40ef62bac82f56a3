"""The one error step 04 raises for unusable inputs, shared by every merge module."""


class MergeInputError(ValueError):
    """An adapter or model folder cannot be merged; raised before anything is written, naming file and layer."""
