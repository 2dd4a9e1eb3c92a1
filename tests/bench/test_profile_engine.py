"""bench.profile_engine's split of GPU kernel time by kind, on kernel names as
cuBLAS, FlashAttention and this repository's Triton kernels name them."""

from __future__ import annotations

from types import SimpleNamespace

from torch.autograd import DeviceType

from bench.profile_engine import kernel_shares


def kernel(name: str, us: float, device=DeviceType.CUDA):
    return SimpleNamespace(key=name, self_device_time_total=us, device_type=device)


def test_kernel_time_splits_by_kind():
    events = [
        kernel("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT", 400),  # a bf16 or FP8 GEMM from cuBLASLt
        kernel("sm90_xmma_gemm_e4m3e4m3_e4m3f32_f32_tn_n_tilesize128x128x128", 100),
        kernel("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64>>", 150),
        kernel("rms_norm_quant_kernel", 60),
        kernel("qk_norm_rope_kernel", 40),
        kernel("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", 250),
        kernel("aten::_scaled_mm", 999, device=DeviceType.CPU),  # an op's row repeats its kernels' time: skipped
    ]
    assert kernel_shares(events, 1000) == {"fused (rerank_engine Triton kernels)": 0.1, "attention": 0.15,
                                           "matrix products": 0.5, "other": 0.25}
