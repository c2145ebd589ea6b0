//! Any bytes through the path an uploaded photo takes: decode (with limits), composite on white,
//! pad and resize to the model's input. It must return an error or a tensor of the right size,
//! never panic, hang or allocate without bound. A JPEG is decoded reduced where it can be (as
//! search and import decode), so the scaling decoder is fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::model::{Fit, InputSpec, Layout};
use lookalike::preprocess::{decode_reduced, prepare, to_rgb_on_white, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    // Smaller limits than the server's so the fuzzer spends its time on parsing, not on
    // legitimately large images.
    let limits = DecodeLimits { max_pixels: 4_000_000, max_bytes: 1 << 20 };
    if let Ok(image) = decode_reduced(data, &limits, 16) {
        let input = InputSpec { name: "image".into(), size: 32, layout: Layout::Nchw, mean: [0.5; 3], std: [0.5; 3], fit: Fit::Pad };
        let tensor = prepare(&to_rgb_on_white(&image), &input);
        assert_eq!(tensor.len(), 3 * 32 * 32);
        assert!(tensor.iter().all(|x| x.is_finite()));
    }
});
