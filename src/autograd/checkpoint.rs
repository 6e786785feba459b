//! Activation checkpointing: one node that keeps only its inputs and re-runs its function in the backward pass.

use super::{record_outputs, run_backward, set_grad_enabled, tracking};
use crate::{bail, Result, Tensor};
use std::collections::HashSet;
use std::sync::Arc;

type Function = dyn Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send + Sync;

/// Runs `f(inputs)` without recording its graph, and records one node `op` in its place that
/// keeps only the inputs: its backward runs `f` again with the graph on, back-propagates the
/// outputs' gradients through it and returns the inputs'. The memory of what `f` saves for its
/// backward is then needed only for one such node at a time.
///
/// `f` gets the leaves that require grad (parameters) as they are and detached copies of the
/// other inputs. Every tensor `f` uses that requires grad must be among `inputs` (a parameter it
/// captures gets its gradient only through them: the backward pass says so otherwise), and `f`
/// must compute the same outputs each time (seeded dropout does).
pub fn checkpoint(
    op: &'static str,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send + Sync + 'static,
) -> Result<Vec<Tensor>> {
    if !tracking(inputs) {
        return f(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    // Per input: what `f` gets, and whether the input's gradient is wanted. A detached copy
    // keeps the data but lets go of the graph before it.
    let kept: Vec<(Tensor, bool)> = inputs
        .iter()
        .map(|t| match (t.is_leaf_param(), t.tracks_grad()) {
            (true, _) => ((*t).clone(), true),
            (false, tracks) => (t.detach(), tracks),
        })
        .collect();
    let args: Vec<Tensor> = kept.iter().map(|(t, _)| t.clone()).collect();
    let outs = set_grad_enabled(false, || f(&args))?;
    drop(args);
    let f: Arc<Function> = Arc::new(f);
    let backward = move |dys: &[Option<Tensor>]| recompute(op, &kept, &*f, dys);
    Ok(record_outputs(op, outs, inputs, Box::new(backward)))
}

/// The node's backward: `f` again on fresh copies of the inputs, with the graph on.
fn recompute(op: &str, kept: &[(Tensor, bool)], f: &Function, dys: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    let args: Vec<Tensor> = kept
        .iter()
        .map(|(t, wanted)| match (t.is_leaf_param(), wanted) {
            (true, _) | (false, false) => t.clone(),
            (false, true) => t.requires_grad_(),
        })
        .collect();
    let outs = set_grad_enabled(true, || f(&args))?;
    if outs.len() != dys.len() {
        bail!(Grad, "{op}: the recomputed forward gave {} outputs, the first run {}", outs.len(), dys.len());
    }
    let mut roots = Vec::new();
    for (out, dy) in outs.into_iter().zip(dys) {
        let Some(dy) = dy else { continue };
        if out.shape() != dy.shape() {
            bail!(Grad, "{op}: the recomputed forward gave shape {:?}, the first run {:?}", out.shape(), dy.shape());
        }
        if out.tracks_grad() {
            roots.push((out, dy.clone()));
        }
    }
    if roots.is_empty() {
        return Ok(vec![None; kept.len()]);
    }
    let grads = set_grad_enabled(false, || run_backward(&roots, &mut |_, _| Ok(())))?;
    let known: HashSet<u64> = args.iter().map(Tensor::id).collect();
    if grads.map.keys().any(|id| !known.contains(id)) {
        bail!(
            Grad,
            "{op}: the checkpointed function used a tensor that requires grad but is not among its inputs; \
             pass every parameter it uses as an input"
        );
    }
    Ok(args.iter().zip(kept).map(|(a, (_, wanted))| if *wanted { grads.get(a).cloned() } else { None }).collect())
}

impl Tensor {
    /// A leaf that requires grad: a parameter, whose gradient is collected by its identity.
    fn is_leaf_param(&self) -> bool {
        self.0.requires_grad && self.0.grad_fn.is_none()
    }
}
