//! Colour: what colour a product is, from its own pixels, and how alike two colours are.
//!
//! A shape-only match gets colour wrong most visibly, and colour is what a shopper can always
//! name. Each photo gets a [`ColourDescriptor`]: a soft histogram over the named colours of
//! [`VOCABULARY`] in CIELAB (each pixel shares its weight between the prototypes near it, so a
//! red that is almost orange counts a little as orange), taken over the product's own pixels:
//! - a catalog shot's background is what its border has (its median colour); the product is
//!   what differs from it ([`describe_product`]);
//! - in a shopper's photo the product is where localisation found it, else near the centre;
//!   the photo's border colour is discounted the same way, and, where the learned head says
//!   which places are product, so are colours found mostly elsewhere ([`describe_query`]).
//!
//! Descriptors are stored as the square roots of the histogram's shares, so their dot product
//! is the Bhattacharyya coefficient (1 for the same colours, 0 for disjoint ones) and a
//! descriptor has unit length. The named colour is the histogram's dominant prototype, or
//! [`MULTI`] when no colour has most of the product.
//!
//! Here: the named colours and CIELAB. Beside it: descriptors and how they are taken from a
//! photo (descriptor.rs), and colour as a search control: the modes, every product's colour in
//! memory, and the blend of shape and colour (ranking.rs).

mod descriptor;
mod ranking;

pub use descriptor::{describe_product, describe_query, of_product, of_query, ColourDescriptor, ColourEstimate, Foreground, Pixels};
pub use ranking::{search_matching, ColourMode, ColourTable, MATCH_CANDIDATES, MATCH_FIRST_CANDIDATES, MATCH_WEIGHT, NARROW_POOL_WEIGHT};

/// A colour shoppers name, with the sRGB value it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedColour {
    pub name: &'static str,
    pub rgb: [u8; 3],
}

/// The named colours: the Fashion Product Images `baseColour` names most products carry, each
/// with a reference sRGB value. The values are spread so that a garment's own shading (10-15 %
/// darker in its folds) stays nearest its own name (`tests` check every one).
pub const VOCABULARY: [NamedColour; 15] = [
    NamedColour { name: "Black", rgb: [22, 22, 24] },
    NamedColour { name: "White", rgb: [246, 246, 244] },
    NamedColour { name: "Grey", rgb: [128, 128, 130] },
    NamedColour { name: "Navy Blue", rgb: [22, 32, 92] },
    NamedColour { name: "Blue", rgb: [40, 105, 215] },
    NamedColour { name: "Red", rgb: [215, 30, 40] },
    NamedColour { name: "Maroon", rgb: [105, 12, 32] },
    NamedColour { name: "Pink", rgb: [245, 150, 190] },
    NamedColour { name: "Green", rgb: [35, 150, 65] },
    NamedColour { name: "Olive", rgb: [115, 120, 40] },
    NamedColour { name: "Yellow", rgb: [245, 215, 45] },
    NamedColour { name: "Orange", rgb: [245, 125, 25] },
    NamedColour { name: "Brown", rgb: [120, 72, 40] },
    NamedColour { name: "Beige", rgb: [222, 202, 165] },
    NamedColour { name: "Purple", rgb: [120, 45, 155] },
];

/// The name of a product with no dominant colour (stripes, prints, two-tone).
pub const MULTI: &str = "Multi";

/// The histogram's bins: every named colour, and more shades of the greys, which span the
/// whole lightness range (a light grey would otherwise fall between white and beige, and
/// count as beige).
const PROTOTYPES: [NamedColour; 17] = {
    let mut all = [NamedColour { name: "", rgb: [0; 3] }; 17];
    let mut i = 0;
    while i < VOCABULARY.len() {
        all[i] = VOCABULARY[i];
        i += 1;
    }
    all[15] = NamedColour { name: "Grey", rgb: [190, 190, 192] };
    all[16] = NamedColour { name: "Grey", rgb: [76, 76, 78] };
    all
};

/// Dimensions of a [`ColourDescriptor`]: one per prototype.
pub const BINS: usize = PROTOTYPES.len();

/// Names without chroma: a product whose descriptor is mostly these is "grey" for
/// [`ColourDescriptor::is_chromatic`].
const ACHROMATIC: [&str; 3] = ["Black", "White", "Grey"];

/// The named colour `text` means (case and spacing ignored), or a message listing the names.
pub fn parse_name(text: &str) -> Result<&'static str, String> {
    let wanted: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    VOCABULARY
        .iter()
        .map(|c| c.name)
        .chain([MULTI])
        .find(|name| name.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase() == wanted)
        .ok_or_else(|| format!("unknown colour {text:?}: use match, any or one of {}", names().join(", ")))
}

/// Every colour name, [`MULTI`] last.
pub fn names() -> Vec<&'static str> {
    VOCABULARY.iter().map(|c| c.name).chain([MULTI]).collect()
}

/// The reference sRGB of a named colour (any case), for a swatch.
pub fn reference_rgb(name: &str) -> Option<[u8; 3]> {
    VOCABULARY.iter().find(|c| c.name.eq_ignore_ascii_case(name)).map(|c| c.rgb)
}

/// sRGB (D65) to CIELAB.
pub fn lab_of(rgb: [u8; 3]) -> [f32; 3] {
    let linear = rgb.map(|c| {
        let c = f32::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let [r, g, b] = linear;
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

fn delta_e(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_bad_ones_list_the_choices() {
        assert_eq!(parse_name("navy blue"), Ok("Navy Blue"));
        assert_eq!(parse_name("NavyBlue"), Ok("Navy Blue"));
        assert_eq!(parse_name("multi"), Ok(MULTI));
        let error = parse_name("chartreuse").unwrap_err();
        assert!(error.contains("Red") && error.contains("Navy Blue") && error.contains("match"), "{error}");
    }
}
