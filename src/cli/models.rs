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
    Ok(())
}
