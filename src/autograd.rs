//! Reverse-mode autograd. Each differentiable op records a node with its backward closure;
//! `loss.backward()` walks the graph in reverse topological order. Knows no op by name.

use crate::{bail, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type BackwardFn = dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

/// How an op's output was made: its inputs and the rule giving their gradients from the output's.
pub struct GradFn {
    op: &'static str,
    inputs: Vec<Tensor>,
    backward: Box<BackwardFn>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording any graph (inference, optimizer updates, backward itself).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

impl Tensor {
    /// Whether gradients flow through this tensor: a leaf that requires them, or an op's output.
    pub fn tracks_grad(&self) -> bool {
        self.0.requires_grad || self.0.grad_fn.is_some()
    }
}

fn tracking(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad())
}

/// Attaches `backward` to `out` when any input tracks gradients. `backward` gets dL/d(out)
/// and returns one gradient (or None) per input, each shaped like that input.
pub fn record(
    op: &'static str,
    out: Tensor,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    if !tracking(inputs) {
        return out;
    }
    let node = GradFn { op, inputs: inputs.iter().map(|t| (*t).clone()).collect(), backward: Box::new(backward) };
    let i = &out.0;
    Tensor::from_storage(i.storage.clone(), i.offset, &i.shape, i.dtype).with_grad_fn(Arc::new(node))
}

/// For ops with no backward rule: an error if any input would need a gradient.
pub fn no_backward(op: &str, inputs: &[&Tensor]) -> Result<()> {
    if tracking(inputs) {
        bail!(
            Grad,
            "{op}: has no backward rule, but an input requires grad; call it on .detach()ed tensors or inside no_grad"
        );
    }
    Ok(())
}

impl Tensor {
    fn with_grad_fn(self, f: Arc<GradFn>) -> Tensor {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|_| unreachable!("fresh tensor"));
        inner.grad_fn = Some(f);
        Tensor(Arc::new(inner))
    }

    /// Gradients of this one-element tensor with respect to every leaf that requires grad.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            bail!(
                Grad,
                "backward: needs a one-element loss, got shape {:?}; reduce it first (sum/mean) or use backward_with",
                self.shape()
            );
        }
        let seed = Tensor::full_on(self.shape(), 1.0, self.device());
        self.backward_with(&seed)
    }

    /// Backward from an explicit output gradient `dy` (shaped like `self`).
    pub fn backward_with(&self, dy: &Tensor) -> Result<Gradients> {
        if dy.shape() != self.shape() {
            bail!(Grad, "backward_with: gradient shape {:?} differs from output shape {:?}", dy.shape(), self.shape());
        }
        if !self.tracks_grad() {
            bail!(Grad, "backward: the output does not depend on any tensor that requires grad");
        }
        crate::autograd::no_grad(|| run_backward(self, dy, &mut |_, _| Ok(())))
    }

    /// `backward` that calls `hook(leaf, gradient)` as soon as each leaf's gradient is final,
    /// while the rest of the backward pass is still to run (data-parallel training starts
    /// sending gradients then).
    pub fn backward_with_hook(&self, hook: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>) -> Result<Gradients> {
        if self.numel() != 1 {
            bail!(Grad, "backward_with_hook: needs a one-element loss, got shape {:?}", self.shape());
        }
        if !self.tracks_grad() {
            bail!(Grad, "backward: the output does not depend on any tensor that requires grad");
        }
        let seed = Tensor::full_on(self.shape(), 1.0, self.device());
        crate::autograd::no_grad(|| run_backward(self, &seed, hook))
    }
}

type LeafHook<'a> = &'a mut dyn FnMut(&Tensor, &Tensor) -> Result<()>;

fn run_backward(root: &Tensor, dy: &Tensor, hook: LeafHook) -> Result<Gradients> {
    // Reverse topological order by iterative DFS (post-order), so deep graphs don't recurse.
    let mut order: Vec<Tensor> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(f) = &t.0.grad_fn {
            for inp in &f.inputs {
                if inp.tracks_grad() && !seen.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    let mut grads: HashMap<u64, Tensor> = HashMap::new();
    grads.insert(root.id(), dy.clone());
    let mut leaves = HashMap::new();
    for t in order.iter().rev() {
        let Some(g) = grads.remove(&t.id()) else {
            continue;
        };
        let Some(f) = &t.0.grad_fn else {
            // Every consumer of a leaf comes before it in this order: its gradient is final.
            hook(t, &g)?;
            leaves.insert(t.id(), g);
            continue;
        };
        let input_grads = (f.backward)(&g)?;
        debug_assert_eq!(input_grads.len(), f.inputs.len(), "{}: backward arity", f.op);
        for (inp, ig) in f.inputs.iter().zip(input_grads) {
            let Some(ig) = ig else { continue };
            if !inp.tracks_grad() {
                continue;
            }
            if ig.shape() != inp.shape() {
                bail!(
                    Grad,
                    "{}: backward gave a gradient of shape {:?} for an input of shape {:?}",
                    f.op,
                    ig.shape(),
                    inp.shape()
                );
            }
            let acc = match grads.remove(&inp.id()) {
                Some(prev) => crate::ops::add(&prev, &ig)?,
                None => ig,
            };
            grads.insert(inp.id(), acc);
        }
    }
    Ok(Gradients { map: leaves })
}

/// Gradients by tensor identity, as returned by `backward`.
#[derive(Default, Debug)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// dL/d`t`, or None if the loss does not depend on `t` or it does not require grad.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
