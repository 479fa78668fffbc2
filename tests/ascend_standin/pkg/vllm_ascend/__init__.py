"""Stand-in for vllm-ascend's package entry points (vllm_ascend/__init__.py at 182b75e)."""


def register() -> str:
    """Platform plugin: like vllm-ascend's, always returns its platform class."""
    return "vllm_ascend.platform.NPUPlatform"


def register_model() -> None:
    """General plugin: vllm-ascend registers model classes here; the stand-in has none."""
    return None
