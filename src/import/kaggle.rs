//! The Kaggle "Fashion Product Images" catalog layout: a directory holding `styles.csv` (one
//! product per row: `id,gender,masterCategory,subCategory,articleType,baseColour,season,year,
//! usage,productDisplayName`) and `images/ID.jpg`.
//!
//! The published `styles.csv` is dirty, and a catalog import should take what is usable and say
//! what it left out rather than fail on row 6000 of 44,000:
//! - some product names contain commas without quotes, so those rows have more fields than the
//!   header; the extra fields are joined back into the name column (`productDisplayName`,
//!   `name` or `title`, wherever it is; the last column when there is none);
//! - rows with fewer fields than the header, or without an id, are reported and skipped;
//! - some listed products have no image file; they are reported and skipped;
//! - blank lines, a UTF-8 byte-order mark, CRLF line ends and stray non-UTF-8 bytes occur in
//!   re-saved copies and are tolerated, and so are semicolons or tabs between the fields (a
//!   spreadsheet's export in many locales).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::types::NAME_COLUMNS;

/// The image extensions tried for `images/ID.*` (in any case), in order of preference: those
/// of the Fashion Product Images layout, every other format lookalike decodes, then the phone
/// formats it does not (so that the import says why it skipped the product, not that it has
/// no photo).
const IMAGE_EXTENSIONS: [&str; 11] = ["jpg", "png", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif"];

/// One product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StyleRow {
    /// The product id (also the image's file stem).
    pub id: String,
    /// Every column as `(header, value)`, in header order, including `id`.
    pub metadata: Vec<(String, String)>,
    /// The product image, known to exist when the catalog was read.
    pub image: PathBuf,
}

impl StyleRow {
    /// The value of column `name`, if the catalog has that column.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What [`read_catalog`] read and what it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KaggleReport {
    /// Data rows read (header and blank lines not counted), imported or not.
    pub rows: usize,
    /// Ids of rows skipped because no `images/ID.jpg` (or `.png`, `.jpeg`, `.webp`, ... in any case) exists.
    pub missing_images: Vec<String>,
    /// Rows skipped as unusable: line number in `styles.csv` (1-based) and the reason.
    pub malformed: Vec<(u64, String)>,
    /// Lines of the malformed rows whose product id could not be read (too few fields, an
    /// empty or unusable id): which products they list is unknown.
    pub unidentified: Vec<u64>,
}

impl KaggleReport {
    /// Rows that became [`StyleRow`]s.
    pub fn imported(&self) -> usize {
        self.rows.saturating_sub(self.missing_images.len() + self.malformed.len())
    }
}

impl fmt::Display for KaggleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows: {} imported, {} without an image, {} malformed", self.rows, self.imported(), self.missing_images.len(), self.malformed.len())
    }
}

/// Reads a catalog directory (`styles.csv` + `images/`). Unusable rows are skipped and listed in
/// the report; only an unreadable `styles.csv`, a missing `images/` directory or a header
/// without the id column are errors. `id_column` names the column of product ids (and photo
/// names), in any case: [`ID_COLUMN`] in the Fashion Product Images layout, `sku` or `handle`
/// in a shop's own export.
pub fn read_catalog(dir: &Path, id_column: &str) -> Result<(Vec<StyleRow>, KaggleReport)> {
    let csv_path = dir.join("styles.csv");
    let bytes = std::fs::read(&csv_path).with_context(|| format!("reading {}", csv_path.display()))?;
    // Recorded as the real, absolute path: the server refuses to read an image through any
    // symbolic link (one planted later could point anywhere), so none may be in what it records;
    // and a relative path would depend on the directory the server is started in.
    let images_dir = dir.join("images");
    let images_dir = images_dir.canonicalize().with_context(|| format!("resolving the catalog's image directory {}", images_dir.display()))?;
    let image_files = list_files(&images_dir)?;
    parse_styles_by(&bytes, &csv_path, id_column, |id| find_image(&images_dir, &image_files, id))
}

/// The column of product ids in the Fashion Product Images layout.
pub const ID_COLUMN: &str = "id";

/// The field separator of a `styles.csv`: a comma, as the Fashion Product Images file has, or
/// the semicolon or tab that a spreadsheet writes in many locales (Excel's "CSV" where the
/// decimal separator is a comma): the first under which the header line has the id column.
fn delimiter(body: &[u8], id_column: &str) -> u8 {
    let header = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let names_id = |separator: u8| {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).delimiter(separator).from_reader(header);
        reader.byte_records().next().and_then(|r| r.ok()).is_some_and(|r| r.iter().any(|f| String::from_utf8_lossy(f).trim().eq_ignore_ascii_case(id_column)))
    };
    [b',', b';', b'\t'].into_iter().find(|&separator| names_id(separator)).unwrap_or(b',')
}

/// Parses the bytes of a `styles.csv`; `image_of` finds a product's image by id (or says it is
/// missing). Pure apart from that lookup, so it can be fuzzed on arbitrary bytes.
pub fn parse_styles(bytes: &[u8], csv_path: &Path, image_of: impl Fn(&str) -> Option<PathBuf>) -> Result<(Vec<StyleRow>, KaggleReport)> {
    parse_styles_by(bytes, csv_path, ID_COLUMN, image_of)
}

/// [`parse_styles`] with the product ids in column `id_column` (any case).
pub fn parse_styles_by(bytes: &[u8], csv_path: &Path, id_column: &str, image_of: impl Fn(&str) -> Option<PathBuf>) -> Result<(Vec<StyleRow>, KaggleReport)> {
    // The csv crate does not strip a byte-order mark; left in, it would become part of the first
    // header name ("\u{feff}id") and the id column would not be found.
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // `flexible`: rows with a different number of fields are data to repair or report, not a
    // reason to abort the whole file.
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter(body, id_column)).from_reader(body);
    let mut records = reader.byte_records();

    let header: Vec<String> = match records.next() {
        Some(record) => {
            let record = record.with_context(|| format!("{}: reading the header", csv_path.display()))?;
            record.iter().map(|f| String::from_utf8_lossy(f).trim().to_string()).collect()
        }
        None => bail!("{} is empty: expected a header line naming the columns, {id_column} among them", csv_path.display()),
    };
    let Some(id_index) = header.iter().position(|h| h.eq_ignore_ascii_case(id_column)) else {
        bail!(
            "{}: the header {:?} has no {id_column} column (columns separated by commas, semicolons or tabs; name the column of product ids with --id-column)",
            csv_path.display(),
            header.join(",")
        );
    };

    // Where unquoted commas of a product name split it: the free-text column.
    let free_text = NAME_COLUMNS.iter().find_map(|name| header.iter().position(|h| h == name)).unwrap_or(header.len() - 1);

    let mut rows = Vec::new();
    let mut report = KaggleReport::default();
    let mut first_seen: HashMap<String, u64> = HashMap::new();
    let mut lines = LineCounter::default();
    for record in records {
        let record = record.with_context(|| format!("reading {}", csv_path.display()))?;
        // The csv crate's own line numbers do not count blank lines; count from the byte offset
        // so reported numbers match what an editor shows.
        let line = record.position().map_or(0, |p| lines.line_at(body, p.byte()));
        let fields: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        // The csv crate skips empty lines; a line of only spaces is blank too.
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue;
        }
        report.rows += 1;
        let values = match fit_to_header(fields, header.len(), free_text) {
            Ok(values) => values,
            Err(reason) => {
                report.malformed.push((line, reason));
                report.unidentified.push(line);
                continue;
            }
        };
        let id = values[id_index].clone();
        if let Err(reason) = check_id(&id) {
            report.malformed.push((line, reason));
            report.unidentified.push(line);
            continue;
        }
        if let Some(first) = first_seen.get(&id) {
            report.malformed.push((line, format!("duplicate id {id:?} (first on line {first})")));
            continue;
        }
        first_seen.insert(id.clone(), line);
        let Some(image) = image_of(&id) else {
            report.missing_images.push(id);
            continue;
        };
        let metadata = header.iter().cloned().zip(values).collect();
        rows.push(StyleRow { id, metadata, image });
    }
    Ok((rows, report))
}

/// Converts the csv crate's record positions into 1-based line numbers, scanning each byte
/// once. A record's position is where the previous record's terminator ended, which can be
/// before its `\n` or before blank lines; the record itself starts at the next byte that is
/// not a line break.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    newlines: u64,
}

impl LineCounter {
    fn line_at(&mut self, text: &[u8], byte: u64) -> u64 {
        let mut byte = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
        while byte < text.len() && matches!(text[byte], b'\r' | b'\n') {
            byte += 1;
        }
        if byte >= self.offset {
            self.newlines += text[self.offset..byte].iter().filter(|&&b| b == b'\n').count() as u64;
            self.offset = byte;
        }
        self.newlines + 1
    }
}

/// Makes a row's fields line up with the header: extra fields are commas of the column
/// `free_text` (the product name) that were not quoted, so they are joined back into it with
/// ","; a row with too few fields cannot be repaired. Fields are trimmed after joining, so
/// "Shirt, Blue" keeps its space.
fn fit_to_header(mut fields: Vec<String>, columns: usize, free_text: usize) -> Result<Vec<String>, String> {
    if fields.len() < columns {
        return Err(format!("{} fields, the header has {columns}", fields.len()));
    }
    let extra = fields.len() - columns;
    if extra > 0 {
        let name = fields.drain(free_text..=free_text + extra).collect::<Vec<_>>().join(",");
        fields.insert(free_text, name);
    }
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

/// An id names the image file `images/ID.jpg`, so it must be a plain file stem: a value like
/// `../../x` must not reach outside the catalog directory.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty id".to_string());
    }
    let plain = id.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) && !id.starts_with('.');
    if !plain {
        return Err(format!("id {id:?} is not usable as a file name"));
    }
    Ok(())
}

/// The names of the regular files in `images/` by (file stem, extension in lower case: cameras
/// write `.JPG`), read once: one directory listing is much cheaper than tens of thousands of
/// `stat` calls, several extensions each. Where two differ only in the extension's case, the
/// lower-case one. Symbolic links are left out (their product is reported as missing its
/// image): a link could point anywhere on the machine, and the catalog must only ever read the
/// shop's own folder.
fn list_files(dir: &Path) -> Result<HashMap<(String, String), OsString>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing the catalog's image directory {}", dir.display()))?;
    let mut files = HashMap::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some((stem, ext)) = name.to_str().and_then(|n| n.rsplit_once('.')) else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let key = (stem.to_string(), ext.to_ascii_lowercase());
        if ext == key.1 || !files.contains_key(&key) {
            files.insert(key, name.clone());
        }
    }
    Ok(files)
}

fn find_image(images_dir: &Path, files: &HashMap<(String, String), OsString>, id: &str) -> Option<PathBuf> {
    IMAGE_EXTENSIONS.iter().find_map(|ext| files.get(&(id.to_string(), ext.to_string()))).map(|name| images_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName";

    /// Writes `styles.csv` with `csv` as its exact content, and an image file for each id in
    /// `images` (name with extension).
    fn catalog(csv: &[u8], images: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("styles.csv"), csv).unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        for name in images {
            std::fs::write(dir.path().join("images").join(name), b"not decoded here").unwrap();
        }
        dir
    }

    #[test]
    fn reads_a_clean_catalog() {
        let csv = format!(
            "{HEADER}\n15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n\
             39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans\n"
        );
        let dir = catalog(csv.as_bytes(), &["15970.jpg", "39386.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        assert_eq!(report, KaggleReport { rows: 2, ..Default::default() });
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "15970");
        assert_eq!(rows[0].metadata.len(), 10);
        assert_eq!(rows[0].metadata[0], ("id".to_string(), "15970".to_string()));
        assert_eq!(rows[0].get("articleType"), Some("Shirts"));
        assert_eq!(rows[0].get("productDisplayName"), Some("Turtle Check Men Navy Blue Shirt"));
        assert_eq!(rows[1].image, dir.path().join("images/39386.jpg"));
        assert_eq!(report.to_string(), "2 rows: 2 imported, 0 without an image, 0 malformed");
    }

    #[test]
    fn unquoted_commas_in_the_name_are_joined_back() {
        let csv = format!(
            "{HEADER}\n11,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver, Gold Toned Watch\n\
             12,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Sports,Nike, Inc.,Men Red T-shirt\n\
             13,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Sports,\"Quoted, properly\"\n"
        );
        let dir = catalog(csv.as_bytes(), &["11.jpg", "12.jpg", "13.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        assert!(report.malformed.is_empty(), "{report:?}");
        assert_eq!(rows[0].get("productDisplayName"), Some("Titan Women Silver, Gold Toned Watch"));
        assert_eq!(rows[1].get("productDisplayName"), Some("Nike, Inc.,Men Red T-shirt"));
        assert_eq!(rows[2].get("productDisplayName"), Some("Quoted, properly"));
        assert!(rows.iter().all(|r| r.metadata.len() == 10));
    }

    /// A shop's own export names its product ids otherwise (`SKU`): `--id-column` says which
    /// column, in any case; the photos are named after it. `id`, if there too, is just data.
    #[test]
    fn the_id_column_can_be_named() {
        let csv = "Title;SKU;id\nBoots;B-100;7\nScarf;S-200;8\n";
        let dir = catalog(csv.as_bytes(), &["B-100.jpg", "S-200.webp"]);
        let (rows, report) = read_catalog(dir.path(), "sku").unwrap();
        assert_eq!(report, KaggleReport { rows: 2, ..Default::default() });
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["B-100", "S-200"]);
        assert_eq!((rows[0].get("Title"), rows[0].get("id")), (Some("Boots"), Some("7")));
        let err = read_catalog(dir.path(), "handle").unwrap_err().to_string();
        assert!(err.contains("no handle column") && err.contains("--id-column"), "{err}");
    }

    /// A camera's `.JPG`, a shop's `.webp`: any format lookalike decodes, in any case.
    #[test]
    fn photos_in_any_decodable_format_and_extension_case_are_found() {
        let csv = "id,articleType\n41,Shirts\n42,Shirts\n43,Shirts\n44,Shirts\n45,Shirts\n";
        let dir = catalog(csv.as_bytes(), &["41.JPG", "42.webp", "43.Png", "44.JPG", "44.jpg", "45.txt"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        let found: Vec<&str> = rows.iter().map(|r| r.image.file_name().and_then(|n| n.to_str()).unwrap()).collect();
        assert_eq!(found, ["41.JPG", "42.webp", "43.Png", "44.jpg"]);
        assert_eq!(report.missing_images, ["45"]);
    }

    /// A spreadsheet's export where the decimal separator is a comma: semicolons between the
    /// fields (and a byte-order mark, as Excel writes it), or tabs; a comma inside a value is
    /// then just text.
    #[test]
    fn semicolons_or_tabs_between_the_fields_are_read_too() {
        for separator in [";", "\t"] {
            let csv = format!("\u{feff}id{separator}productDisplayName{separator}price\r\n41{separator}Boots, leather{separator}89,00\r\n42{separator}Scarf{separator}12,50\r\n");
            let dir = catalog(csv.as_bytes(), &["41.jpg", "42.jpg"]);
            let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
            assert_eq!(report, KaggleReport { rows: 2, ..Default::default() }, "{separator:?}");
            assert_eq!((rows[0].id.as_str(), rows[0].get("productDisplayName"), rows[0].get("price")), ("41", Some("Boots, leather"), Some("89,00")), "{separator:?}");
            assert_eq!(rows[1].get("price"), Some("12,50"));
        }
        // No id column under any separator: the error says which separators were tried.
        let dir = catalog(b"sku;name\n1;a\n", &["1.jpg"]);
        let err = read_catalog(dir.path(), ID_COLUMN).unwrap_err().to_string();
        assert!(err.contains("no id column") && err.contains("semicolons"), "{err}");
    }

    /// A shop's own CSV with the name before other columns: the name's commas stay in the
    /// name and the price stays the price.
    #[test]
    fn unquoted_commas_are_joined_into_the_name_column_wherever_it_is() {
        let csv = "id,productDisplayName,price,baseColour\n41,Boots, leather, brown,89.00,Brown\n42,Plain Scarf,12.50,Red\n";
        let dir = catalog(csv.as_bytes(), &["41.jpg", "42.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        assert!(report.malformed.is_empty(), "{report:?}");
        assert_eq!(rows[0].get("productDisplayName"), Some("Boots, leather, brown"));
        assert_eq!((rows[0].get("price"), rows[0].get("baseColour")), (Some("89.00"), Some("Brown")));
        assert_eq!((rows[1].get("productDisplayName"), rows[1].get("price")), (Some("Plain Scarf"), Some("12.50")));
    }

    #[test]
    fn short_rows_and_empty_ids_are_reported_and_skipped() {
        let csv = format!(
            "{HEADER}\n21,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Fine Shirt\n\
             22,Men,Apparel\n\
             ,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,No Id Shirt\n\
             ../../etc/passwd,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Sneaky\n\
             21,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Same Id Again\n"
        );
        let dir = catalog(csv.as_bytes(), &["21.jpg", "22.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["21"]);
        assert_eq!(report.rows, 5);
        let lines: Vec<u64> = report.malformed.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
        assert!(report.malformed[0].1.contains("3 fields"), "{:?}", report.malformed);
        assert!(report.malformed[1].1.contains("empty id"));
        assert!(report.malformed[2].1.contains("file name"));
        assert!(report.malformed[3].1.contains("duplicate") && report.malformed[3].1.contains("line 2"));
        assert_eq!(report.unidentified, [3, 4, 5], "a duplicate's id is known: it is listed");
        assert_eq!(report.imported(), 1);
    }

    #[test]
    fn missing_images_are_reported_and_other_extensions_found() {
        let csv = format!(
            "{HEADER}\n31,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Has Jpg\n\
             32,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Has Png\n\
             33,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Has Jpeg\n\
             34,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Has Nothing\n"
        );
        let dir = catalog(csv.as_bytes(), &["31.jpg", "32.png", "33.jpeg", "35.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        let images: Vec<PathBuf> = rows.iter().map(|r| r.image.clone()).collect();
        let expected: Vec<PathBuf> = ["31.jpg", "32.png", "33.jpeg"].iter().map(|n| dir.path().join("images").join(n)).collect();
        assert_eq!(images, expected);
        assert_eq!(report.missing_images, ["34"]);
        assert!(report.malformed.is_empty());
    }

    #[test]
    fn bom_crlf_blank_lines_and_stray_bytes_are_tolerated() {
        let mut csv = b"\xEF\xBB\xBF".to_vec();
        csv.extend_from_slice(HEADER.as_bytes());
        csv.extend_from_slice(b"\r\n\r\n41,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Caf\xE9 Shirt\r\n");
        csv.extend_from_slice(b"   \r\n\n42,Women,Footwear,Shoes,Heels,Black,Winter,2015,Party,Black Heels\r\n\r\n");
        let dir = catalog(&csv, &["41.jpg", "42.jpg"]);
        let (rows, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        assert_eq!(report, KaggleReport { rows: 2, ..Default::default() });
        assert_eq!(rows[0].metadata[0].0, "id", "the BOM is not part of the first header");
        assert_eq!(rows[0].get("productDisplayName"), Some("Caf\u{FFFD} Shirt"));
        assert_eq!(rows[1].get("productDisplayName"), Some("Black Heels"), "no trailing \\r");
        assert_eq!(rows[1].get("year"), Some("2015"));
    }

    #[test]
    fn line_numbers_count_physical_lines() {
        let csv = format!("\u{feff}{HEADER}\r\n\r\n\n51,Men\n52,\"multi\nline\"\n\n53,Women\n");
        let dir = catalog(csv.as_bytes(), &[]);
        let (_, report) = read_catalog(dir.path(), ID_COLUMN).unwrap();
        let lines: Vec<u64> = report.malformed.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 5, 8]);
    }

    #[test]
    fn unusable_catalogs_are_errors_with_paths() {
        let no_csv = tempfile::tempdir().unwrap();
        let text = format!("{:#}", read_catalog(no_csv.path(), ID_COLUMN).unwrap_err());
        assert!(text.contains("styles.csv"), "{text}");

        let no_images = tempfile::tempdir().unwrap();
        std::fs::write(no_images.path().join("styles.csv"), HEADER).unwrap();
        let text = format!("{:#}", read_catalog(no_images.path(), ID_COLUMN).unwrap_err());
        assert!(text.contains("images"), "{text}");

        let empty = catalog(b"", &[]);
        assert!(format!("{:#}", read_catalog(empty.path(), ID_COLUMN).unwrap_err()).contains("empty"));

        let no_id = catalog(b"name,colour\nShirt,Blue\n", &[]);
        assert!(format!("{:#}", read_catalog(no_id.path(), ID_COLUMN).unwrap_err()).contains("no id column"));
    }
}
