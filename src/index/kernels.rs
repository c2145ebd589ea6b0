//! The hot loops of search: dot products between a query and stored rows, in the three storage
//! precisions an index can keep (f32, f16, int8).
//!
//! A scan over a large catalog is bound by memory bandwidth, not arithmetic, so the two things
//! that matter are (1) keeping the CPU's vector units fed (AVX2 + FMA with several independent
//! accumulators, chosen at run time so one binary runs everywhere) and (2) reading fewer bytes
//! per product: f16 halves them, int8 quarters them. Each kernel has a portable fallback that the
//! tests compare against.

/// How an index stores its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 4 bytes per component: exact scores.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes per component: scores within about 1e-3 of exact.
    F16,
    /// Symmetric int8 with one scale per vector, 1 byte per component: scores within about 1e-2.
    I8,
}

impl Precision {
    pub fn bytes_per_component(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
            Precision::I8 => 1,
        }
    }
}

/// Asks the CPU to start loading `data` into its caches, so that a row read next (one picked
/// at random, as the graph's re-rank picks them) is already on its way from memory instead of
/// stalling the loop at its first byte. A hint only: it changes speed, never a result.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(LINE) {
            // SAFETY: prefetching is a hint; the address is inside `data`, and SSE is part of
            // every x86-64 CPU.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Asks the kernel to back the not yet touched pages of `data`'s buffer with 2 MiB pages where
/// it can. The graph's re-rank reads a few hundred rows at random from a buffer of hundreds of
/// megabytes: with 4 KiB pages nearly every row costs a page-table walk besides its memory
/// load. A hint only (Linux; a no-op where transparent huge pages are off or elsewhere).
pub fn advise_huge_pages<T>(data: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = data.as_ptr() as usize;
        let end = start + data.capacity() * std::mem::size_of::<T>();
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if to > from {
            // SAFETY: the range lies inside the vector's allocation; MADV_HUGEPAGE changes how
            // its pages are backed, never their contents.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// Dot product of two f32 slices of equal length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above, cached).
        return unsafe { x86::dot_f32(a, b) };
    }
    portable::dot_f32(a, b)
}

/// Dot product of an f32 query with a row stored as IEEE half-precision bits.
#[inline]
pub fn dot_f16(query: &[f32], row: &[u16]) -> f32 {
    debug_assert_eq!(query.len(), row.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: AVX2, FMA and F16C are available.
        return unsafe { x86::dot_f16(query, row) };
    }
    portable::dot_f16(query, row)
}

/// Integer dot product of two int8 vectors (the caller applies the scales).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 is available.
        return unsafe { x86::dot_i8(a, b) };
    }
    portable::dot_i8(a, b)
}

/// Converts to half-precision bits.
pub fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()
}

/// Symmetric int8 quantisation: `v ≈ q * scale`, with `scale = max|v| / 127`.
pub fn to_i8(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    (v.iter().map(|&x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// Reference implementations: any CPU, and the yardstick the SIMD versions are tested against.
pub mod portable {
    /// Eight independent accumulators so the compiler can still vectorise.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    pub fn dot_f16(query: &[f32], row: &[u16]) -> f32 {
        query.iter().zip(row).map(|(q, &h)| q * half::f16::from_bits(h).to_f32()).sum()
    }

    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx,sse3")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }

    /// Four 8-wide accumulators: 32 components per iteration, enough to hide FMA latency.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(sum);
        while i < n {
            total += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], row: &[u16]) -> f32 {
        let n = q.len().min(row.len());
        let (pq, pr) = (q.as_ptr(), row.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(pr.add(i + 8 * j) as *const __m128i);
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8 * j)), _mm256_cvtph_ps(h), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let h = _mm_loadu_si128(pr.add(i) as *const __m128i);
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_cvtph_ps(h), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(sum);
        while i < n {
            total += *pq.add(i) * half::f16::from_bits(*pr.add(i)).to_f32();
            i += 1;
        }
        total
    }

    /// Sign-extends 16 int8 lanes to int16 and multiplies pairwise into int32 (`vpmaddwd`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i) as *const __m128i));
            let y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i) as *const __m128i));
            let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i + 16) as *const __m128i));
            let y1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16) as *const __m128i));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, y0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, y1));
            i += 32;
        }
        let acc = _mm256_add_epi32(acc0, acc1);
        let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        let s = _mm_hadd_epi32(s, s);
        let mut total = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
        while i < n {
            total += i32::from(*pa.add(i)) * i32::from(*pb.add(i));
            i += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn simd_kernels_agree_with_the_portable_ones_at_every_length() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100, 256, 1280, 1283] {
            let (a, b) = (random(n, 1), random(n, 2));
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - exact).abs() < 1e-3, "f32 n={n}");
            assert!((dot(&a, &b) - portable::dot_f32(&a, &b)).abs() < 1e-3, "f32 vs portable n={n}");
            let h = to_f16(&b);
            assert!((dot_f16(&a, &h) - portable::dot_f16(&a, &h)).abs() < 1e-3, "f16 n={n}");
            let ((qa, _), (qb, _)) = (to_i8(&a), to_i8(&b));
            assert_eq!(dot_i8(&qa, &qb), portable::dot_i8(&qa, &qb), "i8 n={n}");
        }
    }

    #[test]
    fn compressed_scores_stay_close_to_exact_for_unit_vectors() {
        let unit = |seed| {
            let mut v = random(1280, seed);
            crate::index::l2_normalize(&mut v);
            v
        };
        let (a, b) = (unit(3), unit(4));
        let exact = dot(&a, &b);
        assert!((dot_f16(&a, &to_f16(&b)) - exact).abs() < 1e-3);
        let ((qa, sa), (qb, sb)) = (to_i8(&a), to_i8(&b));
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        assert!((approx - exact).abs() < 1e-2, "{approx} vs {exact}");
        assert_eq!(to_i8(&[0.0, 0.0]), (vec![0, 0], 0.0));
    }
}
