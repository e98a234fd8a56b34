//! Continuous learning on a live model: float master weights, weight deltas, versions and
//! rollback, and a head learner.
//!
//! Every version is an immutable [`Version`] (masters, plans, slots) behind an `Arc`. Inference
//! takes the current `Arc` and runs wholly on it; an update builds the next version beside it —
//! no lock held while re-quantizing and re-packing — and publishes it with one pointer swap.

mod head;
mod slots;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tract_onnx::prelude::*;

pub use head::{head_gradient, HeadGradient};
pub use slots::{Int8Input, LayerSlot, Slots};

use crate::error::{Error, Result};
use crate::model::weights::Weights;
use crate::plan::Plans;
use crate::quantize::QuantizationSummary;

/// Set to `true` (or `1`) to make `update`, `learn` and `rollback` refuse.
pub const DISABLE_ENV: &str = "DISABLE_CONTINUOUS_LEARNING";

/// Versions kept for rollback, the current one included.
pub const DEFAULT_HISTORY: usize = 8;

/// One version of the model's weights and the plans that run them.
#[derive(Debug)]
pub struct Version {
    pub number: u64,
    /// Every float weight by ONNX name; unchanged ones are shared with other versions.
    pub masters: Arc<Weights>,
    pub plans: Arc<Plans>,
    pub slots: Arc<Slots>,
    /// The calibrated quantization the int8 plans use (`None`: a float runtime). Recalibration
    /// makes a new version, so rollback restores the ranges with the weights.
    pub quantization: Option<Arc<QuantizationSummary>>,
    /// Plans computing a head layer's input, by layer name, built on first use.
    features: Mutex<HashMap<String, Arc<Plans>>>,
}

impl Version {
    pub fn new(
        number: u64,
        masters: Arc<Weights>,
        plans: Arc<Plans>,
        slots: Arc<Slots>,
        quantization: Option<Arc<QuantizationSummary>>,
    ) -> Self {
        let features = Mutex::new(HashMap::new());
        Version { number, masters, plans, slots, quantization, features }
    }

    /// The cached feature plans of `layer`, or `build`'s.
    pub fn features(
        &self,
        layer: &str,
        build: impl FnOnce() -> Result<Plans>,
    ) -> Result<Arc<Plans>> {
        if let Some(plans) = self.lock_features().get(layer) {
            return Ok(plans.clone());
        }
        let plans = Arc::new(build()?);
        Ok(self.lock_features().entry(layer.to_string()).or_insert(plans).clone())
    }

    /// The feature plans built so far, by layer.
    pub fn features_snapshot(&self) -> Vec<(String, Arc<Plans>)> {
        self.lock_features().iter().map(|(l, p)| (l.clone(), p.clone())).collect()
    }

    pub fn with_features(self, features: HashMap<String, Arc<Plans>>) -> Self {
        Version { features: Mutex::new(features), ..self }
    }

    fn lock_features(&self) -> MutexGuard<'_, HashMap<String, Arc<Plans>>> {
        self.features.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes of master weights this version holds that `other` does not share.
    pub fn own_master_bytes(&self, other: &Version) -> usize {
        self.masters
            .iter()
            .filter(|(name, t)| other.masters.get(*name).is_none_or(|o| !Arc::ptr_eq(o, t)))
            .map(|(_, t)| t.len() * 4)
            .sum()
    }
}

/// The current version and the history, for readers and writers.
#[derive(Debug)]
pub struct Versions {
    current: RwLock<Arc<Version>>,
    /// Held by writers for a whole update: updates apply one after another, each to the latest.
    history: Mutex<History>,
}

/// Past versions (oldest first, the current one last) and the next version number.
#[derive(Debug)]
pub struct History {
    versions: VecDeque<Arc<Version>>,
    next: u64,
    capacity: usize,
}

impl Versions {
    pub fn new(first: Version) -> Self {
        let first = Arc::new(first);
        let next = first.number + 1;
        Versions {
            current: RwLock::new(first.clone()),
            history: Mutex::new(History {
                versions: VecDeque::from([first]),
                next,
                capacity: DEFAULT_HISTORY,
            }),
        }
    }

    /// The version inference runs on; the read lock is held only to clone the `Arc`.
    pub fn current(&self) -> Arc<Version> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Exclusive access for an update; the current version cannot change while it is held.
    pub fn writer(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes `version` (numbered by `history`) as current: one pointer swap.
    pub fn publish(&self, history: &mut History, version: Version) -> u64 {
        let version = Arc::new(version);
        history.next = history.next.max(version.number + 1);
        history.versions.push_back(version.clone());
        while history.versions.len() > history.capacity {
            history.versions.pop_front();
        }
        let number = version.number;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = version;
        number
    }

    /// Makes version `number` (default: the one before the current) current again; later
    /// versions leave the history. Returns the version now current.
    pub fn rollback(&self, number: Option<u64>) -> Result<u64> {
        let mut history = self.writer();
        let available: Vec<u64> = history.versions.iter().map(|v| v.number).collect();
        let position = match number {
            None if history.versions.len() >= 2 => history.versions.len() - 2,
            None => {
                return Err(Error::Update(format!(
                    "nothing to roll back to: the history holds only version {}",
                    available.first().copied().unwrap_or_default()
                )))
            }
            Some(n) => available.iter().position(|&v| v == n).ok_or_else(|| {
                Error::Update(format!("version {n} is not in the history (it holds {available:?})"))
            })?,
        };
        history.versions.truncate(position + 1);
        let target = history.versions[position].clone();
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = target.clone();
        Ok(target.number)
    }

    /// Every version held, oldest first (the current one last).
    pub fn all(&self) -> Vec<Arc<Version>> {
        self.writer().versions.iter().cloned().collect()
    }

    /// Version numbers in the history, oldest first.
    pub fn numbers(&self) -> Vec<u64> {
        self.writer().versions.iter().map(|v| v.number).collect()
    }

    /// Changes how many versions are kept (at least 1).
    pub fn set_capacity(&self, capacity: usize) -> Result<()> {
        if capacity == 0 {
            return Err(Error::config("history", "must keep at least the current version"));
        }
        let mut history = self.writer();
        history.capacity = capacity;
        while history.versions.len() > capacity {
            history.versions.pop_front();
        }
        Ok(())
    }

    /// Bytes of master weights held only by past versions (what the history costs).
    pub fn history_master_bytes(&self) -> usize {
        let history = self.writer();
        let Some(current) = history.versions.back() else { return 0 };
        let mut seen: Vec<&Arc<Tensor>> = current.masters.values().collect();
        let mut bytes = 0;
        for version in history.versions.iter().rev().skip(1) {
            for tensor in version.masters.values() {
                if !seen.iter().any(|s| Arc::ptr_eq(s, tensor)) {
                    bytes += tensor.len() * 4;
                    seen.push(tensor);
                }
            }
        }
        bytes
    }
}

impl History {
    /// The number the next version gets (numbers are never reused, even after a rollback).
    pub fn next_number(&self) -> u64 {
        self.next
    }
}

/// Refuses when continuous learning is switched off by the environment.
pub fn check_enabled() -> Result<()> {
    let value = std::env::var(DISABLE_ENV).unwrap_or_default();
    if matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on") {
        return Err(Error::Update(format!(
            "continuous learning is disabled ({DISABLE_ENV}={value})"
        )));
    }
    Ok(())
}

/// What [`apply_deltas`] made.
#[derive(Debug)]
pub struct Applied {
    /// The changed weights only, as new tensors.
    pub weights: Weights,
    /// Each changed weight's largest magnitude before and after (to warn on sudden growth).
    pub peaks: HashMap<String, (f32, f32)>,
}

/// `masters` with `scale × delta` added to each named weight. Every delta is checked first
/// (known float weight, same shape, float32, finite, finite result), so a refused update
/// changes nothing.
pub fn apply_deltas(masters: &Weights, deltas: &[(String, Tensor)], scale: f32) -> Result<Applied> {
    if !scale.is_finite() {
        return Err(Error::Update(format!("scale must be finite, got {scale}")));
    }
    if deltas.is_empty() {
        return Err(Error::Update("no deltas given".into()));
    }
    let mut changed = Weights::new();
    let mut peaks = HashMap::new();
    for (name, delta) in deltas {
        let refuse = |reason: String| Error::Update(format!("{name}: {reason}"));
        let master = masters.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = masters.keys().map(String::as_str).collect();
            known.sort_unstable();
            let shown = known.iter().take(12).copied().collect::<Vec<_>>().join(", ");
            let more = known.len().saturating_sub(12);
            refuse(format!(
                "no float weight of that name (updatable: {shown}{})",
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ))
        })?;
        if changed.contains_key(name) {
            return Err(refuse("given twice".into()));
        }
        if delta.datum_type() != f32::datum_type() {
            return Err(refuse(format!("delta is {:?}; weights are float32", delta.datum_type())));
        }
        if delta.shape() != master.shape() {
            return Err(refuse(format!(
                "delta has shape {:?}; the weight has {:?}",
                delta.shape(),
                master.shape()
            )));
        }
        let (values, delta) = (master_view(master, name)?, master_view(delta, name)?);
        let mut tensor = Tensor::zero::<f32>(master.shape())
            .map_err(|e| Error::Internal(format!("{name}: {e}")))?;
        let updated = tensor
            .to_plain_array_view_mut::<f32>()
            .ok()
            .and_then(|mut view| {
                view.as_slice_mut().map(|out| add_scaled(values, delta, scale, out))
            })
            .ok_or_else(|| Error::Internal(format!("{name}: new tensor is not contiguous")))?;
        let Some(peak) = updated else {
            // Rare: find what to report, the delta's own value first.
            if let Some(bad) = delta.iter().position(|d| !d.is_finite()) {
                return Err(refuse(format!("delta holds {} at flat index {bad}", delta[bad])));
            }
            let bad = values.iter().zip(delta).position(|(w, d)| !(w + scale * d).is_finite());
            return Err(refuse(format!(
                "the update overflows float32 at flat index {}",
                bad.unwrap_or_default()
            )));
        };
        peaks.insert(name.clone(), peak);
        changed.insert(name.clone(), Arc::new(tensor));
    }
    Ok(Applied { weights: changed, peaks })
}

/// `out = master + scale × delta`, element by element, and the largest magnitude of `master`
/// and of `out`; `None` when a result is not finite (a non-finite delta makes one whatever the
/// scale, and so does a non-finite master value). One pass that vectorises: the maxima are
/// taken on the bits, whose integer order is the order of finite magnitudes.
fn add_scaled(master: &[f32], delta: &[f32], scale: f32, out: &mut [f32]) -> Option<(f32, f32)> {
    const EXPONENT: u32 = 0x7f80_0000;
    let magnitude = |v: f32| v.to_bits() & 0x7fff_ffff;
    let (mut special, mut before, mut after) = (0u32, 0u32, 0u32);
    for ((o, &w), &d) in out.iter_mut().zip(master).zip(delta) {
        *o = w + scale * d;
        special |= u32::from(o.to_bits() & EXPONENT == EXPONENT);
        before = before.max(magnitude(w));
        after = after.max(magnitude(*o));
    }
    (special == 0).then(|| (f32::from_bits(before), f32::from_bits(after)))
}

fn master_view<'t>(tensor: &'t Tensor, name: &str) -> Result<&'t [f32]> {
    let not_plain =
        |reason: String| Error::Update(format!("{name}: not a plain float32 tensor ({reason})"));
    tensor
        .to_plain_array_view::<f32>()
        .map_err(|e| not_plain(e.to_string()))?
        .to_slice()
        .ok_or_else(|| not_plain("not contiguous".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_scaled_is_the_plain_formula_with_both_peaks() {
        let master: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.3).collect();
        let delta: Vec<f32> = (0..37).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.11).collect();
        let mut out = vec![0f32; 37];
        let (before, after) = add_scaled(&master, &delta, -0.7, &mut out).unwrap();
        let want: Vec<f32> = master.iter().zip(&delta).map(|(w, d)| w + -0.7 * d).collect();
        assert_eq!(out, want);
        assert_eq!(before, master.iter().fold(0f32, |m, w| m.max(w.abs())));
        assert_eq!(after, want.iter().fold(0f32, |m, w| m.max(w.abs())));
    }

    #[test]
    fn add_scaled_flags_any_non_finite_result() {
        let mut out = [0f32; 3];
        for (master, delta, scale) in [
            ([1.0, 2.0, 3.0], [0.0, f32::NAN, 0.0], 1.0),
            ([1.0, 2.0, 3.0], [0.0, 0.0, f32::INFINITY], 0.0),
            ([3e38, 2.0, 3.0], [3e38, 0.0, 0.0], 1.0),
        ] {
            assert!(add_scaled(&master, &delta, scale, &mut out).is_none(), "{master:?} {delta:?}");
        }
    }
}
