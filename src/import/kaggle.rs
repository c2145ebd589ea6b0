// TEMPORARY stand-in (replaced by the prep branch).
use std::path::{Path, PathBuf};
pub struct StyleRow { pub id: String, pub metadata: Vec<(String, String)>, pub image: PathBuf }
pub struct KaggleReport { pub rows: usize, pub missing_images: Vec<String>, pub malformed: Vec<(u64, String)> }
pub fn read_catalog(dir: &Path) -> anyhow::Result<(Vec<StyleRow>, KaggleReport)> { let _ = dir; anyhow::bail!("stub") }
