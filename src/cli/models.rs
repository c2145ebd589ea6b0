//! `lookalike models`: prepare the built-in models and list them.

use anyhow::Result;

use lookalike::assets::Assets;
use lookalike::model;

pub fn run() -> Result<()> {
    let assets = Assets::from_env();
    for name in model::BUILTIN {
        let spec = model::resolve(&assets, name)?;
        let marker = if *name == model::DEFAULT_MODEL { " (default)" } else { "" };
        println!("{name}{marker}: {}x{} input, {:?} pooling, {}", spec.input.size, spec.input.size, spec.pooling, spec.onnx.display());
    }
    for name in model::BUILTIN {
        println!("{name}{}: its int8 copy, calibrated on a new catalog's own photos by `index --model {name}{}`", model::INT8_SUFFIX, model::INT8_SUFFIX);
    }
    Ok(())
}
