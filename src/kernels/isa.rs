//! Which instruction set the kernels run: [`Tier`] names one, [`Isa`] is a tier this CPU was
//! found to run. Kernels enable CPU features on the strength of an `Isa` alone, so only
//! detection makes one (its fields are private to `kernels`): safe code cannot hand an
//! AVX-512 or dot-product kernel to a CPU without it.

use std::sync::OnceLock;

/// An instruction set the int8 kernels have a path for, best first per architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// AVX-512 with VNNI (`vpdpbusd` on 512-bit vectors).
    Avx512Vnni,
    /// AVX2 with AVX-VNNI (`vpdpbusd` on 256-bit vectors: Intel laptop cores since Alder Lake).
    AvxVnni,
    /// AVX2 and FMA (products of u8 by i8 widened to 16 bits, exact: Haswell to Zen 3).
    Avx2,
    /// aarch64 NEON with FEAT_I8MM (`usdot`: u8 × i8 natively; Apple M2 and later,
    /// Cortex-A710/X2 and later).
    NeonI8mm,
    /// aarch64 NEON with FEAT_DotProd (`sdot` on codes offset to i8; Apple M1, Cortex-A76 and
    /// later).
    NeonDot,
    /// aarch64 NEON alone (`smull` + `sadalp`: products widened to 16 bits; Cortex-A72/A57).
    Neon,
    /// Portable Rust; the reference every other path is tested against.
    Scalar,
}

/// Environment variable that makes the kernels use a lower instruction set than the CPU's best
/// (`avx_vnni`, `avx2`, `neon_i8mm`, `neon_dotprod`, `neon` or `scalar`): to compare them, or to
/// reproduce a laptop's path here.
pub const ISA_ENV: &str = "JARVIS_PERF_ISA";

impl Tier {
    const ALL: [Tier; 7] = [
        Tier::Avx512Vnni,
        Tier::AvxVnni,
        Tier::Avx2,
        Tier::NeonI8mm,
        Tier::NeonDot,
        Tier::Neon,
        Tier::Scalar,
    ];

    /// The name used in logs, status and [`ISA_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Tier::Avx512Vnni => "avx512_vnni",
            Tier::AvxVnni => "avx_vnni",
            Tier::Avx2 => "avx2",
            Tier::NeonI8mm => "neon_i8mm",
            Tier::NeonDot => "neon_dotprod",
            Tier::Neon => "neon",
            Tier::Scalar => "scalar",
        }
    }

    /// Whether this CPU runs this tier's kernels.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Tier::Avx512Vnni => {
                    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
                    avx2 && avx512 && has!("avx512vnni")
                }
                Tier::AvxVnni => avx2 && has!("avxvnni"),
                Tier::Avx2 => avx2,
                Tier::Scalar => true,
                Tier::NeonI8mm | Tier::NeonDot | Tier::Neon => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            match self {
                Tier::NeonI8mm => has!("neon") && has!("i8mm"),
                Tier::NeonDot => has!("neon") && has!("dotprod"),
                Tier::Neon => has!("neon"),
                Tier::Scalar => true,
                Tier::Avx512Vnni | Tier::AvxVnni | Tier::Avx2 => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Tier::Scalar
        }
    }
}

/// A [`Tier`] this CPU runs, with the optional features its kernels use where present. Made
/// only by detection ([`Isa::detect`], [`Isa::supported`]) or as the portable [`Isa::SCALAR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa {
    tier: Tier,
    /// AVX-512 VBMI (`vpermb`): the depthwise strips and the code max pool (AVX-512 tier only).
    byte_permutes: bool,
}

impl Isa {
    /// The portable reference: runs anywhere.
    pub const SCALAR: Isa = Isa { tier: Tier::Scalar, byte_permutes: false };

    /// `tier` with its optional features, if this CPU runs it.
    fn probe(tier: Tier) -> Option<Isa> {
        if !tier.runs_here() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        let byte_permutes =
            tier == Tier::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512vbmi");
        #[cfg(not(target_arch = "x86_64"))]
        let byte_permutes = false;
        Some(Isa { tier, byte_permutes })
    }

    pub fn tier(self) -> Tier {
        self.tier
    }

    /// The name used in logs, status and [`ISA_ENV`] (`avx512_vnni`, `avx_vnni`, `avx2`,
    /// `neon_i8mm`, `neon_dotprod`, `neon`, `scalar`).
    pub fn name(self) -> &'static str {
        self.tier.name()
    }

    /// Whether the AVX-512 byte permutation (VBMI) kernels run: depthwise strips, the byte
    /// depthwise kernel's AVX-512 path, the code max pool.
    pub fn byte_permutes(self) -> bool {
        self.byte_permutes
    }

    /// Every instruction set this CPU runs, best first (the property tests compare each with
    /// the scalar reference).
    pub fn supported() -> impl Iterator<Item = Isa> {
        Tier::ALL.into_iter().filter_map(Isa::probe)
    }

    /// Whether this is one of the 256-bit instruction sets (AVX2, with or without AVX-VNNI).
    pub fn is_avx2(self) -> bool {
        matches!(self.tier, Tier::AvxVnni | Tier::Avx2)
    }

    /// Whether this is one of the aarch64 NEON instruction sets.
    pub fn is_neon(self) -> bool {
        matches!(self.tier, Tier::NeonI8mm | Tier::NeonDot | Tier::Neon)
    }

    /// The instruction set the kernels use: the best this CPU runs, or the one [`ISA_ENV`] names
    /// if the CPU runs it (a name it does not know, or an instruction set the CPU lacks, is
    /// logged and ignored).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::supported().next().unwrap_or(Isa::SCALAR);
            let Ok(asked) = std::env::var(ISA_ENV) else { return best };
            match Tier::ALL.into_iter().find(|tier| tier.name() == asked.trim()) {
                Some(tier) => Isa::probe(tier).unwrap_or_else(|| {
                    log::warn!(
                        "{ISA_ENV}={}: this CPU cannot run it, using {}",
                        tier.name(),
                        best.name()
                    );
                    best
                }),
                None => {
                    let names = Tier::ALL.map(Tier::name).join(", ");
                    log::warn!("{ISA_ENV}={asked:?} is none of {names}, using {}", best.name());
                    best
                }
            }
        })
    }
}

#[cfg(test)]
impl Isa {
    /// The scalar reference, then every other instruction set this CPU runs: what the property
    /// tests compare.
    pub(crate) fn reference_first() -> impl Iterator<Item = Isa> {
        std::iter::once(Isa::SCALAR).chain(Isa::supported().filter(|&isa| isa != Isa::SCALAR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detection lists the scalar reference last and picks one of the tiers it lists. Under
    /// emulation (`scripts/aarch64.sh`) `JARVIS_PERF_EXPECT_TIERS` names the tiers the emulated
    /// CPU model must give, so a run on a CPU without a feature really tests without it.
    #[test]
    fn detection_gives_the_cpus_tiers() {
        let names: Vec<&str> = Isa::supported().map(Isa::name).collect();
        assert_eq!(names.last(), Some(&"scalar"));
        assert!(names.contains(&Isa::detect().name()), "{names:?}");
        if let Ok(expected) = std::env::var("JARVIS_PERF_EXPECT_TIERS") {
            assert_eq!(names.join(" "), expected.trim());
        }
    }
}
