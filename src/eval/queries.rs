//! Labelled queries from a folder of the shop's own photos (`eval --query-photos`): shopper
//! photos it collected, or catalog shots it held out of the catalog. Two layouts:
//! - the catalog layout (`styles.csv` + `images/ID.jpg`, as `index --kaggle` reads), each photo
//!   labelled by its row's `--label` columns;
//! - photos in sub-folders named after their label (`Tshirts/a.jpg`, `Shoes/b.jpg`: the top
//!   sub-folder is the label of the one `--label` column), the layout a team sorting photos
//!   by hand ends up with; a photo's id is its path in the folder.
//!
//! And photos of catalog products the shop took anew (`eval --product-photos`), each named
//! after the product it shows, to measure how often such a photo finds its product.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{joined_label, stratified_sample, LabelledQuery};
use crate::catalog::SqliteCatalog;
use crate::import::folder::read_folder;
use crate::import::kaggle::{read_catalog, KaggleReport};
use crate::import::ItemImage;
use crate::model::InputSpec;
use crate::preprocess::{self, DecodeLimits};
use crate::types::{Key, Product};

/// The queries a folder gave, and what it left out and why.
#[derive(Debug)]
pub struct QueryFolder {
    /// A stratified sample of the labelled, readable photos (all of them when there are fewer
    /// than asked for).
    pub queries: Vec<LabelledQuery>,
    /// The rows of `styles.csv` read, and those without an image or malformed (empty for
    /// label-named sub-folders).
    pub rows: KaggleReport,
    /// Ids of photos without a value in one of the label columns (or, in sub-folders, not in
    /// one): nothing to judge them by.
    pub unlabelled: Vec<String>,
    /// Photos of the sample that could not be decoded, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// A photo of the folder: its id, its file and its label, if it has one.
struct Listed {
    id: String,
    image: PathBuf,
    label: Option<String>,
}

/// Reads the folder (either layout, see above), draws up to `n` of its labelled photos
/// stratified by label with `seed` (as Fashion-MNIST queries are drawn), and decodes those no
/// larger than the model's `input` needs (a folder of 4,000-pixel phone photos would otherwise
/// take gigabytes). `label` names the columns, comma-separated; several are joined as
/// [`super::LABEL_SEPARATOR`] joins them. A photo that does not decode is left out and reported, as
/// `index` leaves one out. `id_column` names the column of a `styles.csv` that holds the photos'
/// ids.
pub fn read_query_folder(dir: &Path, label: &str, n: usize, seed: u64, input: &InputSpec, id_column: &str) -> Result<QueryFolder> {
    let columns: Vec<&str> = label.split(',').map(str::trim).collect();
    let (listed, report) = match dir.join("styles.csv").is_file() {
        true => labelled_by_rows(dir, &columns, id_column)?,
        false => (labelled_by_sub_folders(dir, &columns)?, KaggleReport::default()),
    };
    let (labelled, unlabelled): (Vec<Listed>, Vec<Listed>) = listed.into_iter().partition(|photo| photo.label.is_some());
    let unlabelled: Vec<String> = unlabelled.into_iter().map(|photo| photo.id).collect();
    if labelled.is_empty() {
        bail!(
            "no photo in {} has a label ({}): label the rows of its styles.csv (or choose the columns with --label), or put each photo in a sub-folder named after its label",
            dir.display(),
            columns.join(", ")
        );
    }
    let labels: Vec<String> = labelled.iter().map(|photo| photo.label.clone().unwrap_or_default()).collect();
    let mut queries = Vec::new();
    let mut unreadable = Vec::new();
    for i in stratified_sample(&labels, n.min(labelled.len()), seed) {
        let (photo, label) = (&labelled[i], labels[i].clone());
        match read_as_searched(&photo.image, input) {
            Ok((image, _)) => queries.push(LabelledQuery { id: photo.id.clone(), image, label }),
            Err(reason) => unreadable.push((photo.id.clone(), reason)),
        }
    }
    if queries.is_empty() {
        let (id, reason) = unreadable.first().map_or(("-", "-"), |(id, reason)| (id.as_str(), reason.as_str()));
        bail!("none of the {} photos drawn from {} could be read ({id}: {reason})", unreadable.len(), dir.display());
    }
    Ok(QueryFolder { queries, rows: report, unlabelled, unreadable })
}

/// A photo file decoded no larger than search itself reads it (the short side at
/// [`preprocess::needed_side`], by the model input's own resizer), with the file's bytes; why
/// not, in words, when it cannot be read or decoded.
fn read_as_searched(file: &Path, input: &InputSpec) -> Result<(image::DynamicImage, Vec<u8>), String> {
    let side = preprocess::needed_side(input, None);
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let image = preprocess::decode_reduced(&bytes, &DecodeLimits::default(), side).map_err(|e| e.to_string())?;
    let (short, long) = (image.width().min(image.height()), image.width().max(image.height()));
    if short <= side {
        return Ok((image, bytes));
    }
    let reduced = preprocess::reduced(&image, (u64::from(long) * u64::from(side)).div_ceil(u64::from(short)) as u32);
    Ok((image::DynamicImage::ImageRgb8(reduced), bytes))
}

/// Photos of catalog products taken anew (`eval --product-photos`), each known by the product
/// it shows, and what the folder left out and why.
#[derive(Debug)]
pub struct ProductPhotos {
    pub photos: Vec<ProductPhoto>,
    /// Photos whose name is no catalog product's id.
    pub unknown: Vec<String>,
    /// Photos that are the catalog's own photo of their product (the same file, or the same
    /// photo saved again, resized too): each would find itself, which says nothing of a photo
    /// taken anew.
    pub catalog_photos: Vec<String>,
    /// Photos that could not be read, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// One photo of [`ProductPhotos`]: its path in the folder, the catalog product it shows, and
/// the photo as search reads it.
#[derive(Debug)]
pub struct ProductPhoto {
    pub id: String,
    pub product: Key,
    pub image: image::DynamicImage,
}

/// Reads a folder of photos of catalog products, each named after the product it shows: the
/// file `ID.jpg`, or any file in a sub-folder `ID/` (several photos of one product). The name
/// is looked up as a product id, then as the file name of one (a catalog imported with
/// `index --images` has ids such as `dresses/red.jpg`: `red.jpg` or `red/` names it, when no
/// other product has that file name).
pub fn read_product_photos(dir: &Path, catalog: &SqliteCatalog, products: &[Product], input: &InputSpec) -> Result<ProductPhotos> {
    let listed = read_folder(dir)?;
    if listed.is_empty() {
        bail!("{} holds no photos (JPEG, PNG, WebP, GIF, BMP, TIFF)", dir.display());
    }
    let by_id: HashMap<&str, &Product> = products.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut by_file_name: HashMap<&str, Option<&Product>> = HashMap::new();
    for product in products {
        let name = product.id.rsplit('/').next().unwrap_or(&product.id);
        by_file_name.entry(file_stem(name)).and_modify(|p| *p = None).or_insert(Some(product));
        if name != product.id {
            by_file_name.entry(name).and_modify(|p| *p = None).or_insert(Some(product));
        }
    }
    let named = |name: &str| by_id.get(name).copied().or_else(|| by_file_name.get(name).copied().flatten());
    let mut read = ProductPhotos { photos: Vec::new(), unknown: Vec::new(), catalog_photos: Vec::new(), unreadable: Vec::new() };
    for item in listed {
        let ItemImage::File(file) = item.image else { continue };
        let name = match item.metadata.get("folder") {
            Some(folder) => folder.split('/').next().unwrap_or(folder),
            None => file_stem(&item.id),
        };
        let Some(product) = named(name) else {
            read.unknown.push(item.id);
            continue;
        };
        let (image, bytes) = match read_as_searched(&file, input) {
            Ok(read) => read,
            Err(reason) => {
                read.unreadable.push((item.id, reason));
                continue;
            }
        };
        if is_catalog_photo(catalog, product, &bytes, &image) {
            read.catalog_photos.push(item.id);
            continue;
        }
        read.photos.push(ProductPhoto { id: item.id, product: product.key, image });
    }
    if read.photos.is_empty() {
        let example = products.first().map_or("ID", |p| p.id.as_str());
        bail!(
            "no photo in {} can measure finding a product ({} name no catalog product, {} are the catalog's own photos, {} could not be read): name each photo after the product it shows (e.g. {example}.jpg, or {example}/front.jpg)",
            dir.display(),
            read.unknown.len(),
            read.catalog_photos.len(),
            read.unreadable.len()
        );
    }
    Ok(read)
}

/// A file name without its extension.
fn file_stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}

/// Whether a photo is the catalog's own photo of `product`: the same bytes, or the same photo
/// saved again, at its size or another, padded or cropped (a shop system's copy of it).
fn is_catalog_photo(catalog: &SqliteCatalog, product: &Product, bytes: &[u8], image: &image::DynamicImage) -> bool {
    if crate::types::content_hash(bytes) == product.content_hash {
        return true;
    }
    // A catalog photo that cannot be read now cannot be compared: the new photo counts.
    catalog.decoded_image(product.key, &product.image).is_ok_and(|own| same_photo(&own, image))
}

/// Whether two images are one photo: the same pixels; or saved again or resized (the same
/// shape, and thumbnails whose pixels differ by at most [`SAME_PHOTO_DIFFERENCE`] on average);
/// or so once each is cut to what lies inside its plain border (padded to a square, or its
/// background cropped, by a shop system). A photo taken anew (another light, background,
/// angle or pose) differs by far more.
fn same_photo(a: &image::DynamicImage, b: &image::DynamicImage) -> bool {
    if a.width() == b.width() && a.height() == b.height() && a.to_rgb8() == b.to_rgb8() {
        return true;
    }
    let (inside_a, inside_b) = (within_plain_borders(a), within_plain_borders(b));
    inside_a.iter().any(|a| inside_b.iter().any(|b| alike(a, b)))
}

/// The same shape, and thumbnails within [`SAME_PHOTO_DIFFERENCE`].
fn alike(a: &image::DynamicImage, b: &image::DynamicImage) -> bool {
    let aspect = |i: &image::DynamicImage| i.width() as f64 / i.height().max(1) as f64;
    if (aspect(a) / aspect(b) - 1.0).abs() > 0.02 {
        return false;
    }
    let thumbnail = |i: &image::DynamicImage| i.resize_exact(16, 16, image::imageops::FilterType::Triangle).to_rgb8().into_raw();
    let (ta, tb) = (thumbnail(a), thumbnail(b));
    let difference = ta.iter().zip(&tb).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / ta.len() as f64;
    difference <= SAME_PHOTO_DIFFERENCE
}

/// `image`, then what lies inside its plain border, then inside that one's (a white pad around a
/// grey studio background is two borders): the box around every pixel unlike the colour the
/// four corners share (within a JPEG's noise). An image whose corners differ has no border,
/// and neither has one whose box would keep less than a quarter of it: that is a detail of
/// the product (a logo on a plain shirt), and two shots of one product share it.
fn within_plain_borders(image: &image::DynamicImage) -> Vec<image::DynamicImage> {
    const NOISE: u8 = 40;
    let mut levels = vec![image.clone()];
    let mut inside = image.to_rgb8();
    for _ in 0..2 {
        let (w, h) = inside.dimensions();
        if w < 3 || h < 3 {
            break;
        }
        let border = inside.get_pixel(0, 0).0;
        let like = |p: &image::Rgb<u8>| p.0.iter().zip(border).all(|(&c, b)| c.abs_diff(b) <= NOISE);
        if ![(w - 1, 0), (0, h - 1), (w - 1, h - 1)].iter().all(|&(x, y)| like(inside.get_pixel(x, y))) {
            break;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        for (x, y, p) in inside.enumerate_pixels() {
            if !like(p) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
        let kept = if x0 > x1 { 0 } else { u64::from(x1 - x0 + 1) * u64::from(y1 - y0 + 1) };
        if kept * 4 < u64::from(w) * u64::from(h) || kept == u64::from(w) * u64::from(h) {
            break;
        }
        inside = image::imageops::crop_imm(&inside, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
        levels.push(image::DynamicImage::ImageRgb8(inside.clone()));
    }
    levels
}

/// Mean difference (0-255) of 16x16 thumbnails below which two photos are one: a resized and
/// re-compressed copy stays under it; see the tests for what photos taken anew measure.
const SAME_PHOTO_DIFFERENCE: f64 = 4.0;

/// The catalog layout: each row's photo, labelled by the row's values of `columns`.
fn labelled_by_rows(dir: &Path, columns: &[&str], id_column: &str) -> Result<(Vec<Listed>, KaggleReport)> {
    let (rows, report) = read_catalog(dir, id_column)?;
    if rows.is_empty() {
        bail!(
            "no row of {}'s styles.csv has a photo to search with ({report}{}): each photo is images/ID.jpg (or .png, .webp, ...), ID being its row's id",
            dir.display(),
            report.missing_images.first().map(|id| format!("; no images/{id}.jpg, for one")).unwrap_or_default()
        );
    }
    let listed = rows
        .into_iter()
        .map(|row| {
            let label = joined_label(columns, |c| row.get(c).map(str::trim).filter(|v| !v.is_empty()));
            Listed { id: row.id, image: row.image, label }
        })
        .collect();
    Ok((listed, report))
}

/// Photos in sub-folders named after their label: the top sub-folder is the label (a photo
/// directly in `dir` has none).
fn labelled_by_sub_folders(dir: &Path, columns: &[&str]) -> Result<Vec<Listed>> {
    if columns.len() > 1 {
        bail!(
            "{} has no styles.csv, so each photo's label is the sub-folder it is in: one label, where --label names {} columns ({}); give one column, or label the photos in a styles.csv",
            dir.display(),
            columns.len(),
            columns.join(", ")
        );
    }
    let photos = read_folder(dir)?;
    if photos.is_empty() {
        bail!("{} holds no photos (JPEG, PNG, WebP, GIF, BMP, TIFF) and no styles.csv", dir.display());
    }
    Ok(photos
        .into_iter()
        .filter_map(|item| {
            let ItemImage::File(image) = item.image else { return None };
            let label = item.metadata.get("folder").and_then(|folder| folder.split('/').next()).map(str::to_string);
            Some(Listed { id: item.id, image, label })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::kaggle::ID_COLUMN;

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

    #[test]
    fn a_resized_copy_is_the_same_photo_and_a_new_shot_is_not() {
        // A product shot: a dark garment with a stripe on a light background.
        let shot = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(300, 400, |x, y| match (x, y) {
            (60..=240, 80..=360) if (150..=170).contains(&y) => image::Rgb([220, 40, 40]),
            (60..=240, 80..=360) => image::Rgb([40, 40, 90]),
            _ => image::Rgb([235, 235, 235]),
        }));
        let jpeg = |image: &image::DynamicImage| {
            let mut bytes = Vec::new();
            image.to_rgb8().write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).expect("jpeg");
            image::load_from_memory(&bytes).expect("decode")
        };
        let resized = jpeg(&shot.resize(150, 200, image::imageops::FilterType::Triangle));
        assert!(same_photo(&shot, &resized) && same_photo(&shot, &jpeg(&shot)), "saved again, smaller");
        // A shop system's copies: padded to a white square, re-framed on its background, or
        // with background cropped away.
        let mut square = image::RgbImage::from_pixel(400, 400, image::Rgb([255, 255, 255]));
        image::imageops::overlay(&mut square, shot.as_rgb8().expect("rgb"), 50, 0);
        let reframed = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(300, 400, |x, y| *shot.as_rgb8().expect("rgb").get_pixel(x.saturating_sub(30), y)));
        let background_cropped = shot.crop_imm(30, 40, 240, 361);
        for (copy, what) in [(image::DynamicImage::ImageRgb8(square), "padded"), (reframed, "re-framed"), (background_cropped, "background cropped")] {
            assert!(same_photo(&shot, &jpeg(&copy)), "{what}");
        }
        // Taken anew: in other light, the garment laid out otherwise; or cut into.
        let mut dimmer = shot.to_rgb8();
        dimmer.pixels_mut().for_each(|p| p.0 = p.0.map(|c| (f32::from(c) * 0.9) as u8));
        let folded = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(300, 400, |x, y| match (x, y) {
            (60..=240, 80..=360) if (250..=270).contains(&y) => image::Rgb([220, 40, 40]),
            (60..=240, 80..=360) => image::Rgb([40, 40, 90]),
            _ => image::Rgb([235, 235, 235]),
        }));
        let cut_into = shot.crop_imm(30, 40, 240, 200);
        for (other, what) in [(image::DynamicImage::ImageRgb8(dimmer), "dimmer"), (folded, "laid out otherwise"), (cut_into, "cut into")] {
            assert!(!same_photo(&shot, &jpeg(&other)), "{what}");
        }
    }

    fn input() -> InputSpec {
        InputSpec { name: "image".into(), size: 224, layout: crate::model::Layout::Nchw, mean: [0.0; 3], std: [1.0; 3], fit: crate::model::Fit::Pad }
    }

    #[test]
    fn a_folder_gives_its_labelled_readable_photos_and_says_what_it_left_out() {
        let dir = folder();
        let read = read_query_folder(dir.path(), "articleType", 100, 42, &input(), ID_COLUMN).expect("read");
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
        let both = read_query_folder(dir.path(), "articleType, baseColour", 100, 42, &input(), ID_COLUMN).expect("read");
        let mut labels: Vec<String> = both.queries.iter().map(|q| q.label.clone()).collect();
        labels.sort();
        assert_eq!(labels, ["Shirts / Blue", "Shirts / Red", "Shoes / Red"]);

        // A sample: one photo per label when two are asked for (photo 5, a Shoes row that does
        // not decode, may be the one drawn: it is then reported, not replaced).
        let two = read_query_folder(dir.path(), "articleType", 2, 42, &input(), ID_COLUMN).expect("read");
        let mut labels: Vec<String> = two.queries.iter().map(|q| q.label.clone()).collect();
        labels.extend(two.unreadable.iter().map(|_| "Shoes".to_string()));
        labels.sort();
        assert_eq!(labels, ["Shirts", "Shoes"]);
    }

    #[test]
    fn photos_in_label_named_sub_folders_are_labelled_by_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let photo = |path: &str| {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            image::RgbImage::from_pixel(30, 40, image::Rgb([20, 20, 200])).save(&file).expect("png");
        };
        for path in ["Shirts/a.png", "Shirts/front/b.png", "Shoes/c.jpg", "loose.png"] {
            photo(path);
        }
        std::fs::write(dir.path().join("Shoes/notes.txt"), "not a photo").expect("write");
        let read = read_query_folder(dir.path(), "articleType", 100, 42, &input(), ID_COLUMN).expect("read");
        let mut got: Vec<(String, String)> = read.queries.iter().map(|q| (q.id.clone(), q.label.clone())).collect();
        got.sort();
        assert_eq!(got, [("Shirts/a.png".into(), "Shirts".into()), ("Shirts/front/b.png".into(), "Shirts".into()), ("Shoes/c.jpg".into(), "Shoes".into())]);
        assert_eq!(read.unlabelled, ["loose.png"], "a photo in no sub-folder has no label");
        assert!(read.unreadable.is_empty() && read.rows == KaggleReport::default());
        // One label per photo: several columns are refused, by name.
        let err = read_query_folder(dir.path(), "articleType,baseColour", 100, 42, &input(), ID_COLUMN).expect_err("two columns").to_string();
        assert!(err.contains("no styles.csv") && err.contains("baseColour"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        let err = read_query_folder(empty.path(), "articleType", 100, 42, &input(), ID_COLUMN).expect_err("no photos").to_string();
        assert!(err.contains("holds no photos"), "{err}");
    }

    #[test]
    fn a_folder_without_the_label_column_is_refused_by_name() {
        let dir = folder();
        let err = read_query_folder(dir.path(), "gender", 100, 42, &input(), ID_COLUMN).expect_err("no gender column").to_string();
        assert!(err.contains("gender") && err.contains("--label"), "{err}");
        let err = read_query_folder(&dir.path().join("nowhere"), "articleType", 100, 42, &input(), ID_COLUMN).expect_err("no folder").to_string();
        assert!(err.contains("nowhere"), "{err}");
        // Rows whose photos are named otherwise: said as such, not as a missing label.
        std::fs::write(dir.path().join("styles.csv"), "id,articleType\n9,Shirts\n").expect("csv");
        let err = read_query_folder(dir.path(), "articleType", 100, 42, &input(), ID_COLUMN).expect_err("no photo").to_string();
        assert!(err.contains("no images/9.jpg") && err.contains("1 without an image"), "{err}");
    }
}
