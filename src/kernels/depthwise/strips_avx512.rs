//! [`StripPlan`](crate::kernels::StripPlan)'s kernel on AVX-512 VBMI: per strip, the words of the
//! last `kh` input rows built by `vpermb` and kept in registers, one `vpdpbusd` per kernel word.

use std::arch::x86_64::*;

use super::strips::{Strip, StripPlan, LANES, MAX_ROW_WORDS};
use crate::kernels::store::codes::{Epilogue, SimdElement};

/// Where the sums go: per channel, a [`ChannelSink`].
pub trait Sink {
    type Channel: ChannelSink;
    /// The sink of channel `c`.
    fn channel(&mut self, c: usize) -> Self::Channel;
}

/// Where one channel's sums go; a value the kernel holds in registers.
pub trait ChannelSink: Copy {
    /// The sums of the outputs `mask` selects from output `at` of the channel's plane (a
    /// two-row strip's second row follows its first in the plane).
    ///
    /// # Safety
    /// AVX-512F/BW must be available; the outputs lie inside the channel's plane.
    unsafe fn put(self, sums: __m512i, at: usize, mask: __mmask16);
}

/// Sums finished by each channel's epilogue and stored into its plane of `out`
/// (`out_len` elements each).
pub struct Finished<'a, E: SimdElement> {
    pub epilogues: &'a [Epilogue],
    pub store: E::Store,
    pub out: *mut E,
    pub out_len: usize,
}

/// One channel's finisher and output plane.
pub struct FinishedChannel<E: SimdElement> {
    finish: E::Finish,
    plane: *mut E,
}

impl<E: SimdElement> Clone for FinishedChannel<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: SimdElement> Copy for FinishedChannel<E> {}

impl<E: SimdElement> Sink for Finished<'_, E> {
    type Channel = FinishedChannel<E>;

    #[inline(always)]
    fn channel(&mut self, c: usize) -> FinishedChannel<E> {
        let finish = E::finisher(&self.epilogues[c], self.store);
        FinishedChannel { finish, plane: self.out.wrapping_add(c * self.out_len) }
    }
}

impl<E: SimdElement> ChannelSink for FinishedChannel<E> {
    #[inline(always)]
    unsafe fn put(self, sums: __m512i, at: usize, mask: __mmask16) {
        // SAFETY: the outputs lie inside the plane (the caller's contract).
        unsafe { E::finish16(sums, &self.finish, mask, self.plane.add(at)) }
    }
}

/// One channel's raw sums stored as they are (for tests).
#[cfg(test)]
#[derive(Clone, Copy)]
pub struct RawSums {
    pub out: *mut i32,
}

#[cfg(test)]
impl Sink for RawSums {
    type Channel = RawSums;

    fn channel(&mut self, _: usize) -> RawSums {
        *self
    }
}

#[cfg(test)]
impl ChannelSink for RawSums {
    #[inline(always)]
    unsafe fn put(self, sums: __m512i, at: usize, mask: __mmask16) {
        // SAFETY: as for `Finished`.
        unsafe { _mm512_mask_storeu_epi32(self.out.add(at).cast(), mask, sums) }
    }
}

#[inline(always)]
fn lane_mask(lanes: usize) -> __mmask16 {
    if lanes >= LANES {
        0xffff
    } else {
        (1u16 << lanes) - 1
    }
}

/// Runs the kernel instance for the plan's kernel height and words per kernel row over
/// consecutive channels.
///
/// # Safety
/// AVX-512F/BW/VNNI/VBMI must be available; `planes` holds whole input planes of the plan,
/// `words` the channels' tap words, and the sink takes every output of each channel.
pub unsafe fn dispatch<S: Sink>(
    plan: &StripPlan,
    planes: &[u8],
    zero_point: u8,
    words: &[i32],
    sink: &mut S,
) {
    let [kh, kw] = plan.geometry.kernel;
    macro_rules! by_height {
        ($words:literal, $paired:literal) => {
            match kh {
                1 => channel::<1, $words, $paired, S>(plan, planes, zero_point, words, sink),
                2 => channel::<2, $words, $paired, S>(plan, planes, zero_point, words, sink),
                3 => channel::<3, $words, $paired, S>(plan, planes, zero_point, words, sink),
                4 => channel::<4, $words, $paired, S>(plan, planes, zero_point, words, sink),
                5 => channel::<5, $words, $paired, S>(plan, planes, zero_point, words, sink),
                6 => channel::<6, $words, $paired, S>(plan, planes, zero_point, words, sink),
                7 => channel::<7, $words, $paired, S>(plan, planes, zero_point, words, sink),
                _ => channel::<8, $words, $paired, S>(plan, planes, zero_point, words, sink),
            }
        };
    }
    // SAFETY: as the caller guarantees (plans take kernels 1 to 8 rows high).
    unsafe {
        match (kw <= 4, plan.rows_per_vector == 2) {
            (true, false) => by_height!(1, false),
            (true, true) => by_height!(1, true),
            (false, false) => by_height!(2, false),
            (false, true) => by_height!(2, true),
        }
    }
}

/// What builds the words of a strip: the plane, its shape, and the strip's loads.
/// `PAIRED`: the strip holds two output rows per vector.
struct Rows<'a, const WORDS: usize, const PAIRED: bool> {
    plane: &'a [u8],
    height: usize,
    width: usize,
    strip: &'a Strip,
    index: [__m512i; WORDS],
    pair_index: [__m512i; WORDS],
    fill: __m512i,
    /// For two-row strips: the input rows between the two halves, the lanes of the
    /// second half, and the bytes of the load that covers both.
    row_step: usize,
    upper: __mmask16,
    pair_len: usize,
}

impl<const WORDS: usize, const PAIRED: bool> Rows<'_, WORDS, PAIRED> {
    /// The words of input row `iy` (the zero point's outside the plane), each lane
    /// permuted by `index`.
    ///
    /// # Safety
    /// AVX-512F/BW/VBMI must be available; the strip's load lies inside each row.
    #[inline(always)]
    unsafe fn row(&self, iy: isize, index: &[__m512i; WORDS]) -> [__m512i; WORDS] {
        if iy < 0 || iy as usize >= self.height {
            return [self.fill; WORDS];
        }
        let mask: __mmask64 = (1u64 << self.strip.load_len) - 1;
        // SAFETY: row `iy` exists and holds the strip's `load_len` bytes from `load_start`.
        unsafe {
            let at = self.plane.as_ptr().add(iy as usize * self.width + self.strip.load_start);
            let row = _mm512_mask_loadu_epi8(self.fill, mask, at.cast());
            std::array::from_fn(|q| _mm512_permutexvar_epi8(index[q], row))
        }
    }

    /// The words of the vector whose first half reads input row `iy`: that row's alone,
    /// or for a two-row strip with the second half's from row `iy + row_step`.
    ///
    /// # Safety
    /// As for [`Self::row`].
    #[inline(always)]
    unsafe fn words(&self, iy: isize) -> [__m512i; WORDS] {
        if !PAIRED {
            // SAFETY: as the caller guarantees.
            return unsafe { self.row(iy, &self.index) };
        }
        let below = iy + self.row_step as isize;
        if iy >= 0 && (below as usize) < self.height {
            let mask: __mmask64 = (1u64 << self.pair_len) - 1;
            // SAFETY: rows `iy` to `below` exist, and the load's `pair_len` bytes end
            // inside row `below` (the plan checked it).
            unsafe {
                let start = iy as usize * self.width + self.strip.load_start;
                let rows =
                    _mm512_mask_loadu_epi8(self.fill, mask, self.plane.as_ptr().add(start).cast());
                return std::array::from_fn(|q| _mm512_permutexvar_epi8(self.pair_index[q], rows));
            }
        }
        // At the top or bottom edge: each half from its own row (or the zero point).
        // SAFETY: as the caller guarantees.
        let (first, second) = unsafe { (self.row(iy, &self.index), self.row(below, &self.index)) };
        std::array::from_fn(|q| _mm512_mask_blend_epi32(self.upper, first[q], second[q]))
    }
}

/// One channel with a `KH`-row kernel of `WORDS` words per row: each strip slides down
/// the output rows, the words of the `KH` input rows under the current ones in registers.
///
/// # Safety
/// As for [`dispatch`]; `KH` and `WORDS` match the plan's kernel, `PAIRED` its rows per vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn channel<const KH: usize, const WORDS: usize, const PAIRED: bool, S: Sink>(
    plan: &StripPlan,
    planes: &[u8],
    zero_point: u8,
    words: &[i32],
    sink: &mut S,
) {
    let (plane_len, words_len) = (plan.plane_len(), plan.words_len());
    let planes = planes.chunks_exact(plane_len.max(1));
    for (c, (plane, words)) in planes.zip(words.chunks_exact(words_len.max(1))).enumerate() {
        let sink = sink.channel(c);
        // SAFETY: as the caller guarantees, for this channel.
        unsafe {
            // A narrow plane's channel is quick: its strip inline saves the call's set-up.
            // Wider planes measured faster as a call of their own (the inlined loop over
            // channels held more registers).
            if PAIRED {
                strips::<KH, WORDS, PAIRED, S::Channel>(plan, plane, zero_point, words, sink)
            } else {
                strips_apart::<KH, WORDS, PAIRED, S::Channel>(plan, plane, zero_point, words, sink)
            }
        };
    }
}

/// [`strips`] compiled apart.
///
/// # Safety
/// As for [`strips`].
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn strips_apart<const KH: usize, const WORDS: usize, const PAIRED: bool, S: ChannelSink>(
    plan: &StripPlan,
    plane: &[u8],
    zero_point: u8,
    words: &[i32],
    sink: S,
) {
    // SAFETY: as the caller guarantees.
    unsafe { strips::<KH, WORDS, PAIRED, S>(plan, plane, zero_point, words, sink) }
}

/// One channel's strips.
///
/// # Safety
/// As for [`channel`], `plane` and `words` one channel's.
#[inline(always)]
unsafe fn strips<const KH: usize, const WORDS: usize, const PAIRED: bool, S: ChannelSink>(
    plan: &StripPlan,
    plane: &[u8],
    zero_point: u8,
    words: &[i32],
    sink: S,
) {
    let g = &plan.geometry;
    let fill = _mm512_set1_epi8(zero_point as i8);
    let taps: [[__m512i; WORDS]; KH] =
        std::array::from_fn(|ky| std::array::from_fn(|q| _mm512_set1_epi32(words[ky * WORDS + q])));
    let per_vector = if PAIRED { 2 } else { 1 };
    // Input rows the window moves down per vector of output rows.
    let advance = per_vector * g.stride[0];
    for strip in &plan.strips {
        let load = |index: &[[u8; 64]; MAX_ROW_WORDS]| -> [__m512i; WORDS] {
            // SAFETY: each index row is 64 bytes.
            std::array::from_fn(|q| unsafe { _mm512_loadu_si512(index[q].as_ptr().cast()) })
        };
        let upper = lane_mask(2 * strip.lanes) & !lane_mask(strip.lanes);
        let rows = Rows::<WORDS, PAIRED> {
            plane,
            height: g.height,
            width: g.width,
            strip,
            index: load(&strip.index),
            pair_index: if PAIRED { load(&strip.pair_index) } else { [fill; WORDS] },
            fill,
            row_step: g.stride[0],
            upper,
            pair_len: plan.pair_len,
        };
        let mut next = -(g.pad[0] as isize);
        let mut window = [[fill; WORDS]; KH];
        for row in window.iter_mut() {
            // SAFETY: as the caller guarantees.
            *row = unsafe { rows.words(next) };
            next += 1;
        }
        // Outputs of every vector but the last, which may hold one row.
        let vectors = g.out[0].div_ceil(per_vector);
        let full = lane_mask(strip.lanes * per_vector);
        let last = lane_mask(strip.lanes * (g.out[0] - (vectors - 1) * per_vector));
        let mut at = strip.first;
        for v in 0..vectors {
            let mut sums = _mm512_setzero_si512();
            for ky in 0..KH {
                for q in 0..WORDS {
                    sums = _mm512_dpbusd_epi32(sums, window[ky][q], taps[ky][q]);
                }
            }
            let mask = if v + 1 == vectors { last } else { full };
            // SAFETY: the vector's outputs lie inside the plane.
            unsafe { sink.put(sums, at, mask) };
            if v + 1 == vectors {
                break;
            }
            at += per_vector * g.out[1];
            for _ in 0..advance {
                for ky in 1..KH {
                    window[ky - 1] = window[ky];
                }
                // SAFETY: as the caller guarantees.
                window[KH - 1] = unsafe { rows.words(next) };
                next += 1;
            }
        }
    }
}
