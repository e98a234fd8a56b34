//! Where inference time goes: every node of the plan timed over repeated runs, on the same
//! threads and weights as [`Runtime::run`] (`jarvis-perf bench --profile`).

use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};

use super::{run_plans_with, Runtime};
use crate::error::{Error, Result};

/// Time spent in one node of the plan, summed over the profiled runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    /// The node's name in the optimised graph (ONNX node names, with tract's suffixes).
    pub node: String,
    /// The operator (`Int8Conv`, `MaxPool`, `Add`, …).
    pub op: String,
    /// Summed over all runs; divide by the run count for the time per run.
    pub total: Duration,
}

impl Runtime {
    /// Runs the model `runs` times on `inputs` (after one warm-up run), timing each node, and
    /// returns the nodes slowest first. Timing adds a clock read per node, so the sum slightly
    /// exceeds a plain run's latency.
    pub fn profile(&self, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<NodeTime>> {
        if runs == 0 {
            return Err(Error::config("runs", "profile at least one run"));
        }
        let executor = self.pools.get(self.pools.max_threads())?;
        let version = self.versions.current();
        let mut times: Vec<NodeTime> = Vec::new();
        let timed = &mut times;
        run_plans_with(
            &version.plans,
            &self.model.inputs,
            inputs,
            executor,
            move |plan, values| {
                let mut state = SimpleState::new(plan)?;
                let nodes = plan.model().nodes();
                let mut totals = vec![Duration::ZERO; nodes.len()];
                state.run(values.clone())?;
                let mut outputs = tvec!();
                for _ in 0..runs {
                    outputs = state.run_plan_with_eval(
                        values.clone(),
                        |ctx, op_state, node, input| {
                            let start = Instant::now();
                            let result = eval(ctx, op_state, node, input);
                            totals[node.id] += start.elapsed();
                            result
                        },
                    )?;
                }
                *timed = nodes
                    .iter()
                    .zip(totals)
                    .filter(|(_, total)| !total.is_zero())
                    .map(|(node, total)| NodeTime {
                        node: node.name.clone(),
                        op: node.op().name().to_string(),
                        total,
                    })
                    .collect();
                Ok(outputs)
            },
        )?;
        times.sort_by_key(|n| std::cmp::Reverse(n.total));
        Ok(times)
    }
}
