//! Exact search: every stored vector is scored against the query.
//!
//! Rows sit in one contiguous row-major buffer so the scan streams through memory; large
//! catalogs are split across threads (each keeps its own top k, merged at the end), because one
//! core cannot pull the whole memory bandwidth. Rows may be kept as f32 (exact scores), f16 or
//! int8 ([`Precision`]) to read fewer bytes per query.

use std::collections::HashMap;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::kernels::{self, Precision};
use super::{Allowed, Hit, TopK, VectorIndex};
use crate::types::Key;

/// Below this many bytes scanned per query one thread is faster than handing out work.
const PARALLEL_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<u16>),
    I8 { data: Vec<i8>, scales: Vec<f32> },
}

/// Exact cosine search by scanning every vector: the embedded default below the approximate
/// index's threshold.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    dim: usize,
    keys: Vec<Key>,
    rows: Rows,
    position: HashMap<Key, usize>,
    /// Split scans across the rayon pool when they are large enough.
    parallel: bool,
}

impl ExactIndex {
    /// An empty exact index storing f32 rows.
    pub fn new(dim: usize) -> ExactIndex {
        ExactIndex::with_precision(dim, Precision::F32)
    }

    pub fn with_precision(dim: usize, precision: Precision) -> ExactIndex {
        let rows = match precision {
            Precision::F32 => Rows::F32(Vec::new()),
            Precision::F16 => Rows::F16(Vec::new()),
            Precision::I8 => Rows::I8 { data: Vec::new(), scales: Vec::new() },
        };
        ExactIndex { dim, keys: Vec::new(), rows, position: HashMap::new(), parallel: true }
    }

    /// Makes every scan single-threaded (for benchmarks that compare one core with one core).
    pub fn single_threaded(mut self) -> ExactIndex {
        self.parallel = false;
        self
    }

    /// Allows or forbids splitting scans across threads.
    pub fn set_parallel(&mut self, parallel: bool) {
        self.parallel = parallel;
    }

    pub fn precision(&self) -> Precision {
        match self.rows {
            Rows::F32(_) => Precision::F32,
            Rows::F16(_) => Precision::F16,
            Rows::I8 { .. } => Precision::I8,
        }
    }

    /// Reserves room for `additional` more vectors, so a bulk load does not reallocate (and
    /// briefly hold two copies of) a multi-gigabyte buffer.
    pub fn reserve(&mut self, additional: usize) {
        self.keys.reserve(additional);
        self.position.reserve(additional);
        let n = additional * self.dim;
        match &mut self.rows {
            Rows::F32(r) => {
                r.reserve_exact(n);
                kernels::advise_huge_pages(r);
            }
            Rows::F16(r) => {
                r.reserve_exact(n);
                kernels::advise_huge_pages(r);
            }
            Rows::I8 { data, scales } => {
                data.reserve_exact(n);
                kernels::advise_huge_pages(data);
                scales.reserve_exact(additional);
            }
        }
    }

    /// Bytes the rows and their keys take in memory.
    pub fn memory_bytes(&self) -> usize {
        self.row_bytes() + self.keys.len() * std::mem::size_of::<Key>()
    }

    /// Bytes held by the stored rows.
    pub fn row_bytes(&self) -> usize {
        self.keys.len() * self.dim * self.precision().bytes_per_component()
    }

    /// The keys held, in storage order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn contains(&self, key: Key) -> bool {
        self.position.contains_key(&key)
    }

    /// The stored vector of `key` (decompressed for f16 / int8 storage).
    pub fn vector(&self, key: Key) -> Option<Vec<f32>> {
        let i = *self.position.get(&key)?;
        let span = i * self.dim..(i + 1) * self.dim;
        Some(match &self.rows {
            Rows::F32(r) => r[span].to_vec(),
            Rows::F16(r) => r[span].iter().map(|&h| half::f16::from_bits(h).to_f32()).collect(),
            Rows::I8 { data, scales } => data[span].iter().map(|&q| f32::from(q) * scales[i]).collect(),
        })
    }

    /// The score of one stored vector against a query prepared by [`ExactIndex::prepare`].
    fn score_row(&self, query: &Query, i: usize) -> f32 {
        let span = i * self.dim..(i + 1) * self.dim;
        match (&self.rows, query) {
            (Rows::F32(r), Query::F32(q)) => kernels::dot(q, &r[span]),
            (Rows::F16(r), Query::F32(q)) => kernels::dot_f16(q, &r[span]),
            (Rows::I8 { data, scales }, Query::I8(q, qs)) => kernels::dot_i8(q, &data[span]) as f32 * qs * scales[i],
            _ => f32::NAN,
        }
    }

    /// The exact score of `key` against `query` (for re-ranking candidates), if present.
    pub fn score(&self, query: &[f32], key: Key) -> Option<f32> {
        let i = *self.position.get(&key)?;
        match &self.rows {
            // The re-rank path of the graph calls this per candidate: no query copy for f32.
            Rows::F32(r) => Some(kernels::dot(query, &r[i * self.dim..(i + 1) * self.dim])),
            _ => Some(self.score_row(&self.prepare(query), i)),
        }
    }

    /// The scores of `query` against the rows of `keys` (keys not held are left out), in the
    /// order given. The rows are scattered over the whole buffer, so each one is fetched from
    /// memory a few rows ahead of its dot product: the loads overlap instead of queueing.
    pub fn scores(&self, query: &[f32], keys: impl IntoIterator<Item = Key>) -> Vec<(Key, f32)> {
        /// Rows in flight ahead of the one being scored.
        const AHEAD: usize = 4;
        let found: Vec<(Key, usize)> = keys.into_iter().filter_map(|key| Some((key, *self.position.get(&key)?))).collect();
        let query = self.prepare(query);
        let row_bytes = |i: usize| match &self.rows {
            Rows::F32(r) => kernels::prefetch(&r[i * self.dim..(i + 1) * self.dim]),
            Rows::F16(r) => kernels::prefetch(&r[i * self.dim..(i + 1) * self.dim]),
            Rows::I8 { data, .. } => kernels::prefetch(&data[i * self.dim..(i + 1) * self.dim]),
        };
        found.iter().take(AHEAD).for_each(|&(_, i)| row_bytes(i));
        found
            .iter()
            .enumerate()
            .map(|(n, &(key, i))| {
                if let Some(&(_, next)) = found.get(n + AHEAD) {
                    row_bytes(next);
                }
                (key, self.score_row(&query, i))
            })
            .collect()
    }

    fn prepare(&self, query: &[f32]) -> Query {
        match self.rows {
            Rows::I8 { .. } => {
                let (q, scale) = kernels::to_i8(query);
                Query::I8(q, scale)
            }
            _ => Query::F32(query.to_vec()),
        }
    }

    fn check_dim(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            bail!("vector has {} dimensions, the index holds {}-d vectors", v.len(), self.dim);
        }
        Ok(())
    }

    /// Top `k` among rows `range`, skipping keys outside `allowed`.
    fn scan(&self, query: &Query, range: std::ops::Range<usize>, k: usize, allowed: Option<&Allowed>) -> TopK {
        let mut top = TopK::new(k);
        for i in range {
            let key = self.keys[i];
            if allowed.is_some_and(|a| !a.contains(&key)) {
                continue;
            }
            top.push(key, self.score_row(query, i));
        }
        top
    }
}

enum Query {
    F32(Vec<f32>),
    I8(Vec<i8>, f32),
}

impl VectorIndex for ExactIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn upsert(&mut self, key: Key, vector: &[f32]) -> Result<()> {
        self.check_dim(vector)?;
        let slot = match self.position.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.keys.len();
                self.position.insert(key, i);
                self.keys.push(key);
                match &mut self.rows {
                    Rows::F32(r) => r.resize(r.len() + self.dim, 0.0),
                    Rows::F16(r) => r.resize(r.len() + self.dim, 0),
                    Rows::I8 { data, scales } => {
                        data.resize(data.len() + self.dim, 0);
                        scales.push(0.0);
                    }
                }
                i
            }
        };
        let span = slot * self.dim..(slot + 1) * self.dim;
        match &mut self.rows {
            Rows::F32(r) => r[span].copy_from_slice(vector),
            Rows::F16(r) => r[span].copy_from_slice(&kernels::to_f16(vector)),
            Rows::I8 { data, scales } => {
                let (q, scale) = kernels::to_i8(vector);
                data[span].copy_from_slice(&q);
                scales[slot] = scale;
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: Key) -> Result<()> {
        let Some(i) = self.position.remove(&key) else { return Ok(()) };
        // Move the last row into the hole so the matrix stays dense.
        let last = self.keys.len() - 1;
        let dim = self.dim;
        if i != last {
            let moved = self.keys[last];
            self.keys[i] = moved;
            self.position.insert(moved, i);
        }
        let (from, to) = (last * dim..(last + 1) * dim, i * dim);
        match &mut self.rows {
            Rows::F32(r) => {
                r.copy_within(from, to);
                r.truncate(last * dim);
            }
            Rows::F16(r) => {
                r.copy_within(from, to);
                r.truncate(last * dim);
            }
            Rows::I8 { data, scales } => {
                data.copy_within(from, to);
                data.truncate(last * dim);
                scales.swap_remove(i);
            }
        }
        self.keys.pop();
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        self.check_dim(query)?;
        let query = self.prepare(query);
        let n = self.keys.len();
        // A selective filter: score only the matching products instead of skipping the rest.
        if let Some(allowed) = allowed.filter(|a| a.len().saturating_mul(8) < n) {
            let mut top = TopK::new(k);
            for key in allowed {
                if let Some(&i) = self.position.get(key) {
                    top.push(*key, self.score_row(&query, i));
                }
            }
            return Ok(top.into_sorted());
        }
        let bytes = n * self.dim * self.precision().bytes_per_component();
        let threads = rayon::current_num_threads();
        if !self.parallel || bytes < PARALLEL_BYTES || threads < 2 {
            return Ok(self.scan(&query, 0..n, k, allowed).into_sorted());
        }
        // A few chunks per thread, so one slow core does not hold the rest up.
        let chunk = n.div_ceil(threads * 4);
        let top = (0..n)
            .step_by(chunk)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| self.scan(&query, start..(start + chunk).min(n), k, allowed))
            .reduce(|| TopK::new(k), TopK::merge);
        Ok(top.into_sorted())
    }
}

#[cfg(test)]
mod tests {
    use super::super::l2_normalize;
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn exact_search_ranks_by_cosine_and_respects_filters() -> Result<()> {
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let mut idx = ExactIndex::with_precision(3, precision);
            idx.upsert(1, &unit(&[1.0, 0.0, 0.0]))?;
            idx.upsert(2, &unit(&[1.0, 1.0, 0.0]))?;
            idx.upsert(3, &unit(&[0.0, 1.0, 0.0]))?;
            idx.upsert(4, &unit(&[0.0, 0.0, 1.0]))?;
            let q = unit(&[1.0, 0.2, 0.0]);
            let keys: Vec<Key> = idx.search(&q, 3, None)?.iter().map(|h| h.key).collect();
            assert_eq!(keys, [1, 2, 3], "{precision:?}");
            let allowed: Allowed = [3, 4].into_iter().collect();
            let keys: Vec<Key> = idx.search(&q, 3, Some(&allowed))?.iter().map(|h| h.key).collect();
            assert_eq!(keys, [3, 4], "filtered search returns every allowed product when fewer than k match");
            let hits = idx.search(&q, 10, None)?;
            assert_eq!(hits.len(), 4);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            assert!(idx.search(&[1.0, 0.0], 1, None).is_err());
        }
        Ok(())
    }

    #[test]
    fn remove_and_replace_keep_the_matrix_consistent() -> Result<()> {
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let mut idx = ExactIndex::with_precision(2, precision);
            for k in 0..5 {
                idx.upsert(k, &unit(&[k as f32 + 1.0, 1.0]))?;
            }
            idx.remove(0)?;
            idx.remove(0)?;
            idx.remove(3)?;
            idx.upsert(4, &unit(&[0.0, 1.0]))?;
            assert_eq!(idx.len(), 3);
            let hits = idx.search(&unit(&[0.0, 1.0]), 1, None)?;
            assert_eq!(hits[0].key, 4);
            assert!((hits[0].score - 1.0).abs() < 1e-2);
            let all: HashSet<Key> = idx.search(&unit(&[1.0, 0.0]), 10, None)?.iter().map(|h| h.key).collect();
            assert_eq!(all, [1, 2, 4].into_iter().collect());
            let v = idx.vector(4).expect("stored");
            assert!((v[1] - 1.0).abs() < 1e-2 && v[0].abs() < 1e-2);
        }
        Ok(())
    }

    /// The threaded scan (large index) and the selective-filter path give the same answer as a
    /// plain single-threaded scan.
    #[test]
    fn threaded_and_filtered_scans_match_a_single_threaded_scan() -> Result<()> {
        let dim = 64;
        let n = PARALLEL_BYTES / (dim * 4) + 1000;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut idx = ExactIndex::new(dim);
        for key in 0..n as Key {
            let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            idx.upsert(key, &unit(&v))?;
        }
        let single = idx.clone().single_threaded();
        for seed in 0..5 {
            let q: Vec<f32> = (0..dim).map(|i| ((i as u64 * 31 + seed) % 17) as f32 - 8.0).collect();
            let q = unit(&q);
            assert_eq!(idx.search(&q, 10, None)?, single.search(&q, 10, None)?);
            let few: Allowed = (0..n as Key).filter(|k| k % 97 == 0).collect();
            let many: Allowed = (0..n as Key).filter(|k| k % 2 == 0).collect();
            assert_eq!(idx.search(&q, 10, Some(&few))?, single.scan(&single.prepare(&q), 0..n, 10, Some(&few)).into_sorted());
            assert_eq!(idx.search(&q, 10, Some(&many))?, single.search(&q, 10, Some(&many))?);
        }
        Ok(())
    }

    /// The graph's re-rank scores its candidates through [`ExactIndex::scores`]: the same
    /// scores as one at a time, in the order asked, without the keys the index does not hold.
    #[test]
    fn scores_of_listed_keys_match_one_at_a_time() -> Result<()> {
        let dim = 40;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let mut idx = ExactIndex::with_precision(dim, precision);
            idx.reserve(50);
            for key in 0..50 {
                let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                idx.upsert(key, &unit(&v))?;
            }
            let q = unit(&(0..dim).map(|i| i as f32 - 20.0).collect::<Vec<_>>());
            let keys = [31, 4, 999, 17, 0, 49, 4];
            let expected: Vec<(Key, f32)> = keys.iter().filter_map(|&k| Some((k, idx.score(&q, k)?))).collect();
            assert_eq!(idx.scores(&q, keys), expected, "{precision:?}");
            assert_eq!(expected.len(), 6);
        }
        Ok(())
    }
}
