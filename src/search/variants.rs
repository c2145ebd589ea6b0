//! Products listed with the very same photo (size variants a shop lists as rows of their own, a
//! product listed twice) are one result to a shopper: their vectors are identical, so without
//! folding they fill a page with copies of one card. The best-ranked of them stands for the
//! others, which it carries as its variants; ranks and pages count photos, not rows.

use std::collections::HashSet;

use anyhow::Result;

use crate::index::Hit;
use crate::types::Key;

/// How much deeper than the page a ranking may be taken to fill the page once same-photo
/// products are folded: a bound for a catalog with hundreds of rows per photo, whose last page
/// may then come up short rather than rank the whole catalog.
pub const MAX_DEPTH_FACTOR: usize = 16;

/// The first `wanted` of `hits` whose photos differ, in rank order, each with its photo's
/// content hash: a hit whose photo an earlier hit has is left out (it is that hit's variant).
/// `photo_of` gives a product's content hash; `None` (the product was removed since the index
/// answered) leaves the hit standing alone, as the page's product lookup then drops it.
pub fn one_per_photo(hits: Vec<Hit>, wanted: usize, mut photo_of: impl FnMut(Key) -> Result<Option<String>>) -> Result<Vec<(Hit, Option<String>)>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut kept = Vec::with_capacity(wanted.min(hits.len()));
    for hit in hits {
        if kept.len() == wanted {
            break;
        }
        let photo = photo_of(hit.key)?;
        if let Some(photo) = &photo {
            if !seen.insert(photo.clone()) {
                continue;
            }
        }
        kept.push((hit, photo));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(keys: &[Key]) -> Vec<Hit> {
        keys.iter().enumerate().map(|(i, &key)| Hit { key, score: 1.0 - i as f32 / 100.0 }).collect()
    }

    /// Products 1, 2 and 3 share photo "a"; 5 shares "b" with 4; 6 is gone.
    fn photo_of(key: Key) -> Result<Option<String>> {
        Ok(match key {
            1..=3 => Some("a".into()),
            4 | 5 => Some("b".into()),
            6 => None,
            other => Some(format!("own-{other}")),
        })
    }

    fn keys(kept: &[(Hit, Option<String>)]) -> Vec<Key> {
        kept.iter().map(|(h, _)| h.key).collect()
    }

    #[test]
    fn the_best_ranked_product_of_a_photo_stands_for_the_others() {
        let kept = one_per_photo(hits(&[2, 7, 1, 3, 5, 8, 4, 9]), 10, photo_of).unwrap();
        assert_eq!(keys(&kept), vec![2, 7, 5, 8, 9]);
        assert_eq!(kept[0].1.as_deref(), Some("a"));
        assert_eq!(kept[2].1.as_deref(), Some("b"));
        // Scores stay those of the hits kept.
        assert_eq!(kept[1].0.score, 0.99);
    }

    #[test]
    fn stops_at_the_number_wanted_counting_photos_not_rows() {
        let kept = one_per_photo(hits(&[1, 2, 3, 7, 4, 5, 8]), 3, photo_of).unwrap();
        assert_eq!(keys(&kept), vec![1, 7, 4]);
    }

    #[test]
    fn a_product_gone_since_the_index_answered_stands_alone() {
        let kept = one_per_photo(hits(&[6, 6, 1]), 10, photo_of).unwrap();
        assert_eq!(keys(&kept), vec![6, 6, 1]);
        assert_eq!(kept[0].1, None);
    }

    #[test]
    fn a_failed_lookup_is_reported() {
        let failing = |_key: Key| -> Result<Option<String>> { anyhow::bail!("catalog is locked") };
        assert!(one_per_photo(hits(&[1]), 10, failing).is_err());
        // Nothing is looked up for an empty ranking.
        assert!(one_per_photo(Vec::new(), 10, failing).unwrap().is_empty());
    }
}
