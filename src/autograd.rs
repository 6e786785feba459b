//! Reverse-mode autograd. Each differentiable op records a node with its backward closure;
//! `loss.backward()` walks the graph in reverse topological order. Knows no op by name.

use crate::{bail, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

mod checkpoint;
pub use checkpoint::checkpoint;

type BackwardFn = dyn Fn(&[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + Send + Sync;

/// How an op's outputs were made: its inputs and the rule giving their gradients from the
/// outputs' (most ops have one output; fused ops may have several).
pub struct GradFn {
    op: &'static str,
    outputs: usize,
    /// Taken when the node runs, so that a backward pass frees what the forward saved as it
    /// goes (as PyTorch does without `retain_graph`); a second pass over the graph is an error.
    saved: Mutex<Option<Saved>>,
}

struct Saved {
    inputs: Vec<Input>,
    /// Holds the tensors the op saved for its backward.
    backward: Box<BackwardFn>,
}

/// What the graph keeps of a node's input: a leaf that requires grad (a parameter, alive anyway),
/// or the node that made it and its shape. Not the input's data: a backward rule that needs it
/// saves it itself, so an input it does not need (of an add, a view, a RoPE) is freed early.
enum Input {
    Leaf(Tensor),
    Output { node: Arc<GradFn>, k: usize, shape: Vec<usize> },
    Constant,
}

impl Input {
    fn new(t: &Tensor) -> Input {
        match &t.0.grad_fn {
            Some((node, k)) => Input::Output { node: node.clone(), k: *k, shape: t.shape().to_vec() },
            None if t.0.requires_grad => Input::Leaf(t.clone()),
            None => Input::Constant,
        }
    }

    /// Where its gradient collects; None for a constant.
    fn slot(&self) -> Option<Slot> {
        match self {
            Input::Leaf(t) => Some(Slot::Leaf(t.id())),
            Input::Output { node, k, .. } => Some(Slot::Output(Arc::as_ptr(node) as usize, *k)),
            Input::Constant => None,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Input::Leaf(t) => t.shape(),
            Input::Output { shape, .. } => shape,
            Input::Constant => &[],
        }
    }
}

const USED: &str = "backward: this graph was already used by a backward pass, which frees what the forward \
                    saved; run the forward again";

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording any graph (inference, optimizer updates, backward itself).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    set_grad_enabled(false, f)
}

/// Runs `f` with recording on or off, then restores what was set (also on a panic).
fn set_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(enabled));
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
    let [out] = record_multi(op, [out], inputs, move |dys| match &dys[0] {
        Some(dy) => backward(dy),
        None => unreachable!("a node runs only when one of its outputs has a gradient"),
    });
    out
}

/// `record` for an op with several outputs: `backward` runs once, after the gradients of all
/// outputs are complete, and gets one per output (None where the loss does not use it).
pub fn record_multi<const N: usize>(
    op: &'static str,
    outs: [Tensor; N],
    inputs: &[&Tensor],
    backward: impl Fn(&[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> [Tensor; N] {
    if !tracking(inputs) {
        return outs;
    }
    let outs = record_outputs(op, outs.into(), inputs, Box::new(backward));
    outs.try_into().unwrap_or_else(|_| unreachable!("one output per output"))
}

/// Records one node with any number of outputs (the caller has checked `tracking`).
fn record_outputs(op: &'static str, outs: Vec<Tensor>, inputs: &[&Tensor], backward: Box<BackwardFn>) -> Vec<Tensor> {
    let node = Arc::new(GradFn {
        op,
        outputs: outs.len(),
        saved: Mutex::new(Some(Saved { inputs: inputs.iter().map(|t| Input::new(t)).collect(), backward })),
    });
    outs.into_iter()
        .enumerate()
        .map(|(k, out)| {
            let i = &out.0;
            Tensor::from_storage(i.storage.clone(), i.offset, &i.shape, i.dtype).with_grad_fn(node.clone(), k)
        })
        .collect()
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
    fn with_grad_fn(self, f: Arc<GradFn>, output: usize) -> Tensor {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|_| unreachable!("fresh tensor"));
        inner.grad_fn = Some((f, output));
        Tensor(Arc::new(inner))
    }

    /// Gradients of this one-element tensor with respect to every leaf that requires grad.
    /// The pass frees what the forward saved as it goes: run the forward again for another.
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
        crate::autograd::no_grad(|| run_backward(&[(self.clone(), dy.clone())], &mut |_, _| Ok(())))
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
        crate::autograd::no_grad(|| run_backward(&[(self.clone(), seed)], hook))
    }
}

/// Where a tensor's gradient collects: an op's output (node address, output index) or a leaf.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Output(usize, usize),
    Leaf(u64),
}

fn slot(t: &Tensor) -> Slot {
    match &t.0.grad_fn {
        Some((f, k)) => Slot::Output(Arc::as_ptr(f) as usize, *k),
        None => Slot::Leaf(t.id()),
    }
}

/// prev + g, written into prev when nothing else holds its storage (a tied embedding's two
/// gradients then take two [V, C] buffers, not three); a new tensor otherwise.
fn accumulate(prev: Tensor, g: &Tensor) -> Result<Tensor> {
    let alone = Arc::strong_count(&prev.0) == 1 && prev.storage().holders() == 1;
    if alone && prev.dtype() == crate::Precision::FP32 && prev.shape() == g.shape() && !prev.shares_storage(g) {
        crate::ops::add_into(&prev, g)?;
        return Ok(prev);
    }
    crate::ops::add(&prev, g)
}

type LeafHook<'a> = &'a mut dyn FnMut(&Tensor, &Tensor) -> Result<()>;

/// Back-propagates from each (root, dL/d root) at once: gradients meeting in a slot add up.
fn run_backward(roots: &[(Tensor, Tensor)], hook: LeafHook) -> Result<Gradients> {
    let mut grads: HashMap<Slot, Tensor> = HashMap::new();
    for (root, dy) in roots {
        let acc = match grads.remove(&slot(root)) {
            Some(prev) => crate::ops::add(&prev, dy)?,
            None => dy.clone(),
        };
        grads.insert(slot(root), acc);
    }
    // Nodes in reverse topological order by iterative DFS (post-order), so deep graphs don't
    // recurse; a node runs after every consumer of any of its outputs.
    let mut order: Vec<Arc<GradFn>> = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut stack: Vec<(Arc<GradFn>, bool)> =
        roots.iter().filter_map(|(r, _)| r.0.grad_fn.as_ref()).map(|(f, _)| (f.clone(), false)).collect();
    // Per leaf: the nodes still to run that take it as input; at 0 its gradient is final.
    let mut pending: HashMap<u64, usize> = HashMap::new();
    while let Some((f, expanded)) = stack.pop() {
        if expanded {
            order.push(f);
            continue;
        }
        if !seen.insert(Arc::as_ptr(&f) as usize) {
            continue;
        }
        stack.push((f.clone(), true));
        let saved = f.saved.lock().unwrap();
        let Some(saved) = saved.as_ref() else { bail!(Grad, "{USED}") };
        for inp in &saved.inputs {
            match inp {
                Input::Leaf(t) => *pending.entry(t.id()).or_default() += 1,
                Input::Output { node, .. } if !seen.contains(&(Arc::as_ptr(node) as usize)) => {
                    stack.push((node.clone(), false))
                }
                _ => {}
            }
        }
    }
    for f in order.iter().rev() {
        let id = Arc::as_ptr(f) as usize;
        let dys: Vec<Option<Tensor>> = (0..f.outputs).map(|k| grads.remove(&Slot::Output(id, k))).collect();
        // Dropped at the end of this iteration: the node's saved tensors go with it.
        let Some(Saved { inputs, backward }) = f.saved.lock().unwrap().take() else { bail!(Grad, "{USED}") };
        let input_grads = match dys.iter().all(Option::is_none) {
            true => vec![None; inputs.len()],
            false => backward(&dys)?,
        };
        debug_assert_eq!(input_grads.len(), inputs.len(), "{}: backward arity", f.op);
        for (inp, ig) in inputs.iter().zip(input_grads) {
            let (Some(ig), Some(slot)) = (ig, inp.slot()) else { continue };
            if ig.shape() != inp.shape() {
                bail!(
                    Grad,
                    "{}: backward gave a gradient of shape {:?} for an input of shape {:?}",
                    f.op,
                    ig.shape(),
                    inp.shape()
                );
            }
            let acc = match grads.remove(&slot) {
                Some(prev) => accumulate(prev, &ig)?,
                None => ig,
            };
            grads.insert(slot, acc);
        }
        for inp in &inputs {
            let Input::Leaf(leaf) = inp else { continue };
            let left = pending.get_mut(&leaf.id()).expect("counted above");
            *left -= 1;
            if *left == 0 {
                if let Some(g) = grads.get(&Slot::Leaf(leaf.id())) {
                    hook(leaf, g)?;
                }
            }
        }
    }
    // A root that is itself a leaf no node takes as input: its gradient is final now.
    let mut hooked = HashSet::new();
    for (root, _) in roots {
        if root.0.grad_fn.is_none() && !pending.contains_key(&root.id()) && hooked.insert(root.id()) {
            hook(root, &grads[&Slot::Leaf(root.id())])?;
        }
    }
    // What is left are the leaves' gradients.
    let map = grads
        .into_iter()
        .filter_map(|(s, g)| match s {
            Slot::Leaf(id) => Some((id, g)),
            Slot::Output(..) => None,
        })
        .collect();
    Ok(Gradients { map })
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
