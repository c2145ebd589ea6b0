//! Any bytes as a catalog's `styles.csv`: parsed into products or reported rows, never a panic,
//! and no accepted id can name a file outside the catalog's `images/` folder.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use lookalike::import::kaggle::parse_styles;

fuzz_target!(|data: &[u8]| {
    let images = Path::new("images");
    if let Ok((rows, _report)) = parse_styles(data, Path::new("styles.csv"), |id| Some(images.join(format!("{id}.jpg")))) {
        for row in rows {
            assert!(!row.id.is_empty());
            assert!(!row.id.contains('/') && !row.id.contains('\\') && !row.id.starts_with('.'), "id {:?} could leave images/", row.id);
            assert_eq!(row.image.parent(), Some(images), "{:?}", row.image);
            let _: PathBuf = row.image;
        }
    }
});
