//! Nearest-neighbour search over product vectors.
//!
//! Everything that answers "which stored vectors are closest to this one" goes through
//! [`VectorIndex`], so an approximate index or a remote vector store can replace the embedded
//! exact scan without the search path changing. Vectors are L2-normalised, so the score is the
//! cosine similarity (a dot product).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use anyhow::{bail, Result};

use crate::catalog::Key;

/// One search result: a product key and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub key: Key,
    pub score: f32,
}

/// The products a filtered search may return. Built from the catalog's metadata before the
/// search, so that top-k is taken among matching products only: a filter never makes a search
/// return fewer than k hits while k products match.
pub type Allowed = HashSet<Key>;

/// A searchable set of vectors.
pub trait VectorIndex: Send + Sync {
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Number of vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds `vector` under `key`, replacing any vector already there.
    fn upsert(&mut self, key: Key, vector: &[f32]) -> Result<()>;
    /// Removes `key`; removing an absent key is not an error.
    fn remove(&mut self, key: Key) -> Result<()>;
    /// The `k` vectors most similar to `query` (best first), restricted to `allowed` if given.
    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>>;
}

/// Exact cosine search by scanning every vector: the embedded default. Vectors sit in one
/// contiguous row-major matrix so the scan streams through memory.
#[derive(Debug, Default, Clone)]
pub struct ExactIndex {
    dim: usize,
    keys: Vec<Key>,
    rows: Vec<f32>,
    position: HashMap<Key, usize>,
}

impl ExactIndex {
    pub fn new(dim: usize) -> ExactIndex {
        ExactIndex { dim, ..Default::default() }
    }

    fn check_dim(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            bail!("vector has {} dimensions, the index holds {}-d vectors", v.len(), self.dim);
        }
        Ok(())
    }
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
        match self.position.get(&key) {
            Some(&i) => self.rows[i * self.dim..(i + 1) * self.dim].copy_from_slice(vector),
            None => {
                self.position.insert(key, self.keys.len());
                self.keys.push(key);
                self.rows.extend_from_slice(vector);
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: Key) -> Result<()> {
        let Some(i) = self.position.remove(&key) else { return Ok(()) };
        // Move the last row into the hole so the matrix stays dense.
        let last = self.keys.len() - 1;
        if i != last {
            let moved = self.keys[last];
            self.keys[i] = moved;
            self.rows.copy_within(last * self.dim..(last + 1) * self.dim, i * self.dim);
            self.position.insert(moved, i);
        }
        self.keys.pop();
        self.rows.truncate(last * self.dim);
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        self.check_dim(query)?;
        let mut top = TopK::new(k);
        for (row, &key) in self.rows.chunks_exact(self.dim).zip(&self.keys) {
            if allowed.is_some_and(|a| !a.contains(&key)) {
                continue;
            }
            top.push(key, dot(query, row));
        }
        Ok(top.into_sorted())
    }
}

/// Dot product with eight independent accumulators, so the compiler can keep a SIMD register
/// per lane instead of serialising on one sum.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Scales `v` to unit length (left as is when it is all zeros).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Keeps the `k` best-scoring keys seen so far (a min-heap on score).
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

#[derive(PartialEq)]
struct Entry(f32, Key);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed so the heap's top is the worst hit; ties broken by key for stable results.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then_with(|| self.1.cmp(&other.1))
    }
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    pub fn push(&mut self, key: Key, score: f32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Entry(score, key));
        } else if let Some(worst) = self.heap.peek() {
            if Entry(score, key) < *worst {
                self.heap.pop();
                self.heap.push(Entry(score, key));
            }
        }
    }

    /// The hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|Entry(score, key)| Hit { key, score }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn exact_search_ranks_by_cosine_and_respects_filters() -> Result<()> {
        let mut idx = ExactIndex::new(3);
        idx.upsert(1, &unit(&[1.0, 0.0, 0.0]))?;
        idx.upsert(2, &unit(&[1.0, 1.0, 0.0]))?;
        idx.upsert(3, &unit(&[0.0, 1.0, 0.0]))?;
        idx.upsert(4, &unit(&[0.0, 0.0, 1.0]))?;
        let q = unit(&[1.0, 0.2, 0.0]);
        let keys: Vec<Key> = idx.search(&q, 3, None)?.iter().map(|h| h.key).collect();
        assert_eq!(keys, [1, 2, 3]);
        let allowed: Allowed = [3, 4].into_iter().collect();
        let keys: Vec<Key> = idx.search(&q, 3, Some(&allowed))?.iter().map(|h| h.key).collect();
        assert_eq!(keys, [3, 4], "filtered search returns every allowed product when fewer than k match");
        let hits = idx.search(&q, 10, None)?;
        assert_eq!(hits.len(), 4);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(idx.search(&[1.0, 0.0], 1, None).is_err());
        Ok(())
    }

    #[test]
    fn remove_and_replace_keep_the_matrix_consistent() -> Result<()> {
        let mut idx = ExactIndex::new(2);
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
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        let all: HashSet<Key> = idx.search(&unit(&[1.0, 0.0]), 10, None)?.iter().map(|h| h.key).collect();
        assert_eq!(all, [1, 2, 4].into_iter().collect());
        Ok(())
    }

    #[test]
    fn dot_handles_lengths_not_multiple_of_eight() {
        let a: Vec<f32> = (0..19).map(|x| x as f32).collect();
        let expected: f32 = a.iter().map(|x| x * x).sum();
        assert_eq!(dot(&a, &a), expected);
    }
}
