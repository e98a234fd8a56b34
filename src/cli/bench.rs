//! `jarvis-perf bench`: latency of repeated inference on random inputs.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

use crate::model::{ElementType, TensorSpec};
use crate::runtime::Runtime;

/// Times `iterations` runs after a warm-up and prints median, p99 and throughput.
pub fn run(runtime: &Runtime, batch: usize, iterations: usize, shapes: &[String]) -> Result<()> {
    if batch == 0 || iterations == 0 {
        bail!("--batch and --iterations must be at least 1");
    }
    let inputs = runtime
        .inputs()
        .iter()
        .map(|spec| random_input(spec, batch, shapes))
        .collect::<Result<Vec<_>>>()?;
    for _ in 0..3 {
        runtime.run(inputs.clone())?;
    }
    let mut samples_ms = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        runtime.run(inputs.clone())?;
        samples_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples_ms.sort_by(f64::total_cmp);
    let median = percentile(&samples_ms, 50.0);
    let p99 = percentile(&samples_ms, 99.0);
    let shapes: Vec<String> = inputs.iter().map(|t| format!("{:?}", t.shape())).collect();
    let precision = if runtime.quantized() { "int8" } else { "float32" };
    println!(
        "{precision}, batch {batch}, {} thread(s), inputs {}, {iterations} runs",
        runtime.threads(),
        shapes.join(" ")
    );
    println!(
        "median {median:.3} ms   p99 {p99:.3} ms   min {:.3} ms   {:.1} items/s",
        samples_ms[0],
        batch as f64 * 1e3 / median
    );
    Ok(())
}

/// Times every node over `iterations` runs and prints the `top` slowest nodes, then the time
/// per operator kind, in ms per run and percent of the profiled total.
pub fn profile(
    runtime: &Runtime,
    batch: usize,
    iterations: usize,
    shapes: &[String],
    top: usize,
) -> Result<()> {
    let inputs = runtime
        .inputs()
        .iter()
        .map(|spec| random_input(spec, batch, shapes))
        .collect::<Result<Vec<_>>>()?;
    let nodes = runtime.profile(inputs, iterations)?;
    let per_run = |d: std::time::Duration| d.as_secs_f64() * 1e3 / iterations as f64;
    let total: f64 = nodes.iter().map(|n| per_run(n.total)).sum();
    let share = |ms: f64| 100.0 * ms / total.max(f64::MIN_POSITIVE);
    println!("profile: {total:.3} ms per run in {} nodes", nodes.len());
    for n in nodes.iter().take(top) {
        let ms = per_run(n.total);
        println!("{ms:9.3} ms {:5.1} %  {:<14} {}", share(ms), n.op, n.node);
    }
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for n in &nodes {
        match by_op.iter_mut().find(|(op, _, _)| *op == n.op) {
            Some(entry) => {
                entry.1 += per_run(n.total);
                entry.2 += 1;
            }
            None => by_op.push((n.op.clone(), per_run(n.total), 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("by operator:");
    for (op, ms, count) in by_op {
        println!("{ms:9.3} ms {:5.1} %  {op} ×{count}", share(ms));
    }
    Ok(())
}

/// The `q`-th percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn random_input(spec: &TensorSpec, batch: usize, shapes: &[String]) -> Result<Tensor> {
    let shape = match explicit_shape(&spec.name, shapes)? {
        Some(shape) => shape,
        None => spec
            .shape
            .iter()
            .enumerate()
            .map(|(axis, dim)| match (axis, dim) {
                (_, Some(n)) => Ok(*n),
                (0, None) => Ok(batch),
                (_, None) => bail!(
                    "input {:?} has dynamic axis {axis}; pass --shape {}=D0xD1x…",
                    spec.name,
                    spec.name
                ),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let element = spec.element_type.unwrap_or(ElementType::F32);
    let mut tensor = Tensor::zero_dt(element.datum_type(), &shape)?;
    if element == ElementType::F32 {
        // A cheap deterministic pseudo-random fill in [0, 1): values matter little for timing,
        // but all-zero inputs could take fast paths real data never takes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for x in tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()? {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *x = (state >> 40) as f32 / (1u64 << 24) as f32;
        }
    }
    Ok(tensor)
}

fn explicit_shape(name: &str, shapes: &[String]) -> Result<Option<Vec<usize>>> {
    for arg in shapes {
        let Some((input, dims)) = arg.split_once('=') else {
            bail!("--shape {arg}: write NAME=D0xD1x…");
        };
        if input == name {
            return dims
                .split('x')
                .map(|d| {
                    d.parse::<usize>().with_context(|| format!("--shape {arg}: bad dim {d:?}"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
