"""Stand-in for vllm_ascend/worker/worker.py (182b75e): ``NPUWorker.__init__`` registers the
Ascend custom ops (``register_ascend_customop``) after vLLM's worker wrapper ran the general
plugins; its model runner hands each attention layer a (K, V) pair of tensors shaped by the
backend's ``get_kv_cache_shape`` (model_runner_v1.py, ``k_shape = kv_cache_shape[1:]``).
"""

import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from vllm_ascend.utils import register_ascend_customop


class NPUModelRunner(CPUModelRunner):
    def initialize_kv_cache_tensors(
        self, kv_cache_config, kernel_block_sizes, kv_cache_allocation_context=None
    ):
        kv_caches = super().initialize_kv_cache_tensors(
            kv_cache_config, kernel_block_sizes, kv_cache_allocation_context
        )
        layers = self.compilation_config.static_forward_context
        for name, packed in kv_caches.items():
            layer = layers[name]
            backend = getattr(layer, "attn_backend", None)
            if backend is None or not hasattr(backend, "get_kv_cache_shape") or packed.dim() != 4:
                continue
            # vLLM's own tensor is [blocks, kv_heads, block, 2 * head]; the Ascend runner
            # allocates K and V apart from the backend's shape.
            blocks, heads, block, two_head = packed.shape
            shape = backend.get_kv_cache_shape(blocks, block, heads, two_head // 2)
            layer.kv_cache = (
                torch.zeros(shape[1:], dtype=packed.dtype, device=packed.device),
                torch.zeros(shape[1:], dtype=packed.dtype, device=packed.device),
            )
        return kv_caches


class NPUWorker(CPUWorker):
    def __init__(
        self, vllm_config, local_rank, rank, distributed_init_method, is_driver_worker=False, **kwargs
    ):
        register_ascend_customop(vllm_config)
        super().__init__(vllm_config, local_rank, rank, distributed_init_method, is_driver_worker, **kwargs)

    def init_device(self):
        super().init_device()
        self.model_runner = NPUModelRunner(self.vllm_config, torch.device("cpu"))
