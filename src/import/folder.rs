//! Any folder of photos as a catalog: every image file below it, recursively, is a product whose
//! id is its path relative to the folder.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{CatalogItem, ItemImage};
use crate::types::Metadata;

/// File extensions taken as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Photo formats lookalike cannot decode (phones save HEIC or AVIF): listed all the same, so
/// that an import reports each as skipped and why, instead of leaving it out without a word.
pub const UNDECODED_PHOTO_EXTENSIONS: &[&str] = &["heic", "heif", "avif"];

/// Lists the images below `dir`. The sub-folder a photo sits in is kept as its `folder`
/// metadata, so a catalog organised as `dresses/…`, `shoes/…` can be filtered by it.
pub fn read_folder(dir: &Path) -> Result<Vec<CatalogItem>> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let root = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let mut items = Vec::new();
    for entry in walkdir::WalkDir::new(&root).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let is_image = path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().chain(UNDECODED_PHOTO_EXTENSIONS).any(|x| x.eq_ignore_ascii_case(e)));
        if !is_image {
            continue;
        }
        let Ok(relative) = path.strip_prefix(&root) else { continue };
        let id = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        let mut metadata = Metadata::new();
        if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            metadata.insert("folder".into(), parent.to_string_lossy().replace('\\', "/"));
        }
        metadata.insert("file".into(), id.clone());
        items.push(CatalogItem { id, image: ItemImage::File(path.to_path_buf()), metadata });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_relative_paths_and_non_images_are_ignored() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("shoes/red"))?;
        std::fs::write(dir.path().join("shoes/red/a.JPG"), b"x")?;
        std::fs::write(dir.path().join("b.png"), b"x")?;
        std::fs::write(dir.path().join("notes.txt"), b"x")?;
        std::fs::write(dir.path().join("phone.HEIC"), b"x")?;
        let items = read_folder(dir.path())?;
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        // A phone's HEIC photo is listed, for the import to say it cannot read it.
        assert_eq!(ids, ["b.png", "phone.HEIC", "shoes/red/a.JPG"]);
        assert_eq!(items[2].metadata["folder"], "shoes/red");
        assert!(!items[0].metadata.contains_key("folder"));
        assert!(read_folder(&dir.path().join("missing")).is_err());
        Ok(())
    }
}
