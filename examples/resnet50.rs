//! Writes a ResNet-50 ONNX graph with torchvision's architecture and seeded random weights: the
//! original design's model, for the plug-in path's test (`tests/model_resnet50.rs`) and
//! `lookalike bench ingest --model`. No pretrained ResNet-50 weights are reachable here, so the
//! weights are random (He-scaled, the last conv of each block damped so activations stay in
//! range); the graph, its cost and its output shape are the real model's.
//!
//!     cargo run --release --example resnet50 [-- OUT.onnx]
//!
//! Default output: `$LOOKALIKE_HOME/models/resnet50-random-v1.onnx` (the asset cache). The input
//! is `input` `[N, 3, 224, 224]` and the output `features`, the last `[N, 2048, 7, 7]` feature
//! map, as a torchvision export cut before its average pool: the README's model description
//! works verbatim with it.

use anyhow::Result;
use lookalike::model::onnx::{self, AttributeProto, Dim, GraphBuilder};
use rand::{Rng, SeedableRng};

fn main() -> Result<()> {
    let out = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => lookalike::assets::Assets::from_env().models_dir().join("resnet50-random-v1.onnx"),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    let mut g = GraphBuilder::new("resnet50");
    let batch = Dim::Param("batch".into());
    g.input("input", onnx::FLOAT, &[batch.clone(), Dim::Fixed(3), Dim::Fixed(224), Dim::Fixed(224)]);

    let x = conv(&mut g, &mut rng, "input", "conv1", 3, 64, 7, 2, 1.0);
    let x = g.node("Relu", &[&x], vec![]);
    let mut x =
        g.node("MaxPool", &[&x], vec![AttributeProto::ints("kernel_shape", &[3, 3]), AttributeProto::ints("strides", &[2, 2]), AttributeProto::ints("pads", &[1, 1, 1, 1])]);
    let mut channels = 64;
    // torchvision's ResNet-50: (blocks, width, stride of the first block) per layer.
    for (layer, (blocks, width, stride)) in [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)].into_iter().enumerate() {
        for block in 0..blocks {
            let p = format!("layer{}.{block}", layer + 1);
            let stride = if block == 0 { stride } else { 1 };
            let out_channels = width * 4;
            let shortcut = if block == 0 { conv(&mut g, &mut rng, &x, &format!("{p}.downsample.0"), channels, out_channels, 1, stride, 1.0) } else { x.clone() };
            let y = conv(&mut g, &mut rng, &x, &format!("{p}.conv1"), channels, width, 1, 1, 1.0);
            let y = g.node("Relu", &[&y], vec![]);
            // v1.5: the 3x3 conv strides.
            let y = conv(&mut g, &mut rng, &y, &format!("{p}.conv2"), width, width, 3, stride, 1.0);
            let y = g.node("Relu", &[&y], vec![]);
            let y = conv(&mut g, &mut rng, &y, &format!("{p}.conv3"), width, out_channels, 1, 1, 0.2);
            let sum = g.node("Add", &[&y, &shortcut], vec![]);
            x = g.node("Relu", &[&sum], vec![]);
            channels = out_channels;
        }
    }
    g.node_with_outputs("Identity", &[&x], &["features"], vec![]);
    g.output("features", onnx::FLOAT, &[batch, Dim::Fixed(2048), Dim::Fixed(7), Dim::Fixed(7)]);
    let model = g.finish(onnx::OPSET, "ResNet-50 (torchvision layout, batch norm folded) with seeded random weights, for tests and benchmarks");
    onnx::write_model(&model, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// A `k`x`k` convolution (batch norm folded in: a bias) with He-scaled uniform weights times
/// `gain`, padded to keep the size at stride 1.
#[allow(clippy::too_many_arguments)]
fn conv(g: &mut GraphBuilder, rng: &mut impl Rng, x: &str, name: &str, cin: usize, cout: usize, k: usize, stride: usize, gain: f32) -> String {
    let fan_in = (cin * k * k) as f32;
    let bound = gain * (6.0 / fan_in).sqrt();
    let weights: Vec<f32> = (0..cout * cin * k * k).map(|_| rng.random_range(-bound..bound)).collect();
    let w = g.initializer_f32(&format!("{name}.weight"), &[cout, cin, k, k], &weights);
    let b = g.initializer_f32(&format!("{name}.bias"), &[cout], &vec![0.0; cout]);
    let pad = (k / 2) as i64;
    g.node(
        "Conv",
        &[x, &w, &b],
        vec![
            AttributeProto::ints("kernel_shape", &[k as i64, k as i64]),
            AttributeProto::ints("strides", &[stride as i64, stride as i64]),
            AttributeProto::ints("pads", &[pad, pad, pad, pad]),
        ],
    )
}
