//! Runtime selection of the AVX-512 kernels.
//!
//! Every kernel has a portable scalar twin that produces identical bytes;
//! the scalar paths also serve as the oracle in tests, which can force them
//! on the current thread.

use std::cell::Cell;

thread_local! {
    static FORCE_SCALAR: Cell<bool> = const { Cell::new(false) };
}

/// Whether the AVX-512 rANS kernel may run (AVX-512F and POPCNT).
#[inline]
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !FORCE_SCALAR.get()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 merge and fused kernels may run (additionally
/// AVX-512BW and VBMI).
#[inline]
pub(crate) fn avx512_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the BMI2 tail packer may run.
#[inline]
pub(crate) fn bmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !FORCE_SCALAR.get() && std::arch::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 encoder may run (additionally BW, VL, VBMI2, CD).
#[inline]
pub(crate) fn avx512_encode() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vbmi2")
            && std::arch::is_x86_feature_detected!("avx512cd")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `f` with the scalar kernels on this thread (for tests).
#[cfg(test)]
pub(crate) fn scalar_only<R>(f: impl FnOnce() -> R) -> R {
    FORCE_SCALAR.set(true);
    let r = f();
    FORCE_SCALAR.set(false);
    r
}
