//! Labelled queries from a folder in the catalog layout (`styles.csv` + `images/ID.jpg`, as
//! `index --kaggle` reads): a shop's own shopper photos, or catalog shots it held out of the
//! catalog, labelled by the same columns as its products (`eval --query-photos`).

use std::path::Path;

use anyhow::{bail, Result};

use super::{stratified_sample, LabelledQuery, LABEL_SEPARATOR};
use crate::import::kaggle::{read_catalog, KaggleReport};
use crate::model::InputSpec;
use crate::preprocess::{self, DecodeLimits};

/// The queries a folder gave, and what it left out and why.
#[derive(Debug)]
pub struct QueryFolder {
    /// A stratified sample of the labelled, readable photos (all of them when there are fewer
    /// than asked for).
    pub queries: Vec<LabelledQuery>,
    /// The rows of `styles.csv` read, and those without an image or malformed.
    pub rows: KaggleReport,
    /// Ids of photos without a value in one of the label columns: nothing to judge them by.
    pub unlabelled: Vec<String>,
    /// Photos of the sample that could not be decoded, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// Reads the folder's rows, labels each by `label`'s columns (comma-separated; joined as
/// [`LABEL_SEPARATOR`] joins them), draws up to `n` of them stratified by label with `seed`
/// (as Fashion-MNIST queries are drawn), and decodes those photos no larger than the model's
/// `input` needs (a folder of 4,000-pixel phone photos would otherwise take gigabytes).
/// A photo that does not decode is left out and reported, as `index` leaves one out.
pub fn read_query_folder(dir: &Path, label: &str, n: usize, seed: u64, input: &InputSpec) -> Result<QueryFolder> {
    let columns: Vec<&str> = label.split(',').map(str::trim).collect();
    let (rows, report) = read_catalog(dir)?;
    if rows.is_empty() {
        bail!(
            "no row of {}'s styles.csv has a photo to search with ({report}{}): each photo is images/ID.jpg (or .png, .jpeg), ID being its row's id",
            dir.display(),
            report.missing_images.first().map(|id| format!("; no images/{id}.jpg, for one")).unwrap_or_default()
        );
    }
    let mut unlabelled = Vec::new();
    let mut labelled = Vec::with_capacity(rows.len());
    for row in rows {
        let values: Option<Vec<&str>> = columns.iter().map(|c| row.get(c).map(str::trim).filter(|v| !v.is_empty())).collect();
        match values {
            Some(values) => {
                let label = values.join(LABEL_SEPARATOR);
                labelled.push((row, label));
            }
            None => unlabelled.push(row.id),
        }
    }
    if labelled.is_empty() {
        bail!("no photo in {} has a value in every label column ({}): label the rows of its styles.csv, or choose the columns with --label", dir.display(), columns.join(", "));
    }
    let labels: Vec<String> = labelled.iter().map(|(_, l)| l.clone()).collect();
    let limits = DecodeLimits::default();
    let side = preprocess::needed_side(input, None);
    let mut queries = Vec::new();
    let mut unreadable = Vec::new();
    for i in stratified_sample(&labels, n.min(labelled.len()), seed) {
        let (row, label) = &labelled[i];
        let decoded = std::fs::read(&row.image).map_err(|e| e.to_string()).and_then(|bytes| preprocess::decode_reduced(&bytes, &limits, side).map_err(|e| e.to_string()));
        match decoded {
            // No larger than search itself would read it: the short side at `side`.
            Ok(image) if image.width().min(image.height()) > side => {
                let scale = side as f32 / image.width().min(image.height()) as f32;
                let (w, h) = (((image.width() as f32 * scale).round() as u32).max(1), ((image.height() as f32 * scale).round() as u32).max(1));
                queries.push(LabelledQuery { id: row.id.clone(), image: image.resize_exact(w, h, image::imageops::FilterType::Triangle), label: label.clone() });
            }
            Ok(image) => queries.push(LabelledQuery { id: row.id.clone(), image, label: label.clone() }),
            Err(reason) => unreadable.push((row.id.clone(), reason)),
        }
    }
    if queries.is_empty() {
        bail!("none of the {} photos drawn from {} could be read (first: {:?})", unreadable.len(), dir.display(), unreadable.first());
    }
    Ok(QueryFolder { queries, rows: report, unlabelled, unreadable })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of four photos: two labelled Shirts, one Shoes, one without a label, one whose
    /// file is not an image; plus one row without a photo.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("images")).expect("mkdir");
        let photo = |side: u32| {
            let mut png = Vec::new();
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(side, side * 2, image::Rgb([200, 30, 30])))
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .expect("png");
            png
        };
        for (id, bytes) in [("1", photo(40)), ("2", photo(2000)), ("3", photo(40)), ("4", photo(40)), ("5", b"not a photo".to_vec())] {
            std::fs::write(dir.path().join("images").join(format!("{id}.png")), bytes).expect("write");
        }
        let csv = "id,articleType,baseColour\n1,Shirts,Red\n2,Shirts,Blue\n3,Shoes,Red\n4,,Red\n5,Shoes,Black\n6,Shoes,White\n";
        std::fs::write(dir.path().join("styles.csv"), csv).expect("csv");
        dir
    }

    fn input() -> InputSpec {
        InputSpec { name: "image".into(), size: 224, layout: crate::model::Layout::Nchw, mean: [0.0; 3], std: [1.0; 3], fit: crate::model::Fit::Pad }
    }

    #[test]
    fn a_folder_gives_its_labelled_readable_photos_and_says_what_it_left_out() {
        let dir = folder();
        let read = read_query_folder(dir.path(), "articleType", 100, 42, &input()).expect("read");
        let mut got: Vec<(String, String)> = read.queries.iter().map(|q| (q.id.clone(), q.label.clone())).collect();
        got.sort();
        assert_eq!(got, [("1".into(), "Shirts".into()), ("2".into(), "Shirts".into()), ("3".into(), "Shoes".into())]);
        assert_eq!(read.unlabelled, ["4"]);
        assert_eq!(read.unreadable.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["5"]);
        assert_eq!(read.rows.missing_images, ["6"]);
        // The large photo is read no larger than search reads it: short side at needed_side.
        let large = read.queries.iter().find(|q| q.id == "2").expect("photo 2");
        let side = preprocess::needed_side(&input(), None);
        assert_eq!((large.image.width(), large.image.height()), (side, side * 2));
        let small = read.queries.iter().find(|q| q.id == "1").expect("photo 1");
        assert_eq!((small.image.width(), small.image.height()), (40, 80));

        // Several columns: both must have a value, joined as eval joins them.
        let both = read_query_folder(dir.path(), "articleType, baseColour", 100, 42, &input()).expect("read");
        let mut labels: Vec<String> = both.queries.iter().map(|q| q.label.clone()).collect();
        labels.sort();
        assert_eq!(labels, ["Shirts / Blue", "Shirts / Red", "Shoes / Red"]);

        // A sample: one photo per label when two are asked for (photo 5, a Shoes row that does
        // not decode, may be the one drawn: it is then reported, not replaced).
        let two = read_query_folder(dir.path(), "articleType", 2, 42, &input()).expect("read");
        let mut labels: Vec<String> = two.queries.iter().map(|q| q.label.clone()).collect();
        labels.extend(two.unreadable.iter().map(|_| "Shoes".to_string()));
        labels.sort();
        assert_eq!(labels, ["Shirts", "Shoes"]);
    }

    #[test]
    fn a_folder_without_the_label_column_is_refused_by_name() {
        let dir = folder();
        let err = read_query_folder(dir.path(), "gender", 100, 42, &input()).expect_err("no gender column").to_string();
        assert!(err.contains("gender") && err.contains("--label"), "{err}");
        let err = read_query_folder(&dir.path().join("nowhere"), "articleType", 100, 42, &input()).expect_err("no folder").to_string();
        assert!(err.contains("nowhere"), "{err}");
        // Rows whose photos are named otherwise: said as such, not as a missing label.
        std::fs::write(dir.path().join("styles.csv"), "id,articleType\n9,Shirts\n").expect("csv");
        let err = read_query_folder(dir.path(), "articleType", 100, 42, &input()).expect_err("no photo").to_string();
        assert!(err.contains("no images/9.jpg") && err.contains("1 without an image"), "{err}");
    }
}
