//! Instruction sets the GPTQ sweeps are compiled for (runtime dispatch). The
//! kernels are the same IEEE operations in every version (no contraction into
//! FMA), so results do not depend on the path taken.

#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    /// `avx512f,avx512vl,avx2,fma,sse4.1`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `avx2,fma,sse4.1`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Generic,
}

impl Isa {
    /// The best version every feature of which this CPU has.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("sse4.1");
            if avx2 && has!("avx512f") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    }
}
