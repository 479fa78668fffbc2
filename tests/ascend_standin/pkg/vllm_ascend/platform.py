"""Stand-in for vllm_ascend/platform.py (182b75e): ``NPUPlatform`` over vLLM's CPU platform.

Mirrored: ``get_attn_backend_cls`` answers from a fixed table keyed by (MLA, sparse) and ignores
the selected backend; ``check_and_update_config`` sets the worker class to its ``NPUWorker`` and
``compilation_config.custom_ops = ["all"]`` (``_setup_worker_and_scheduler``).
Not mirrored: the device (this is vLLM's CPU platform, ``device_type`` "cpu"), the MLA/SFA/DSA
backends (MLA layers get vLLM's CPU backend), its compile backend and graph capture.
"""

from vllm.platforms.cpu import CpuPlatform

_BACKENDS = {(False, False): "vllm_ascend.attention.attention_v1.AscendAttentionBackend"}


class NPUPlatform(CpuPlatform):
    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        key = (attn_selector_config.use_mla, attn_selector_config.use_sparse)
        if key in _BACKENDS:
            return _BACKENDS[key]
        return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        super().check_and_update_config(vllm_config)
        if vllm_config.model_config is None:
            return
        parallel = vllm_config.parallel_config
        if parallel.worker_cls in ("auto", "vllm.v1.worker.cpu_worker.CPUWorker"):
            parallel.worker_cls = "vllm_ascend.worker.worker.NPUWorker"
        vllm_config.compilation_config.custom_ops = ["all"]
