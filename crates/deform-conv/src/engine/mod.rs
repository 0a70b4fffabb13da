//! The fast engine (placeholder: delegates to the reference until the engine lands).

use crate::element::Element;
use crate::op::{ForwardOutputs, GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::ArrayView4;

pub(crate) fn forward<T: Element>(g: &Geometry, ops: &Operands<'_, T>, out: ForwardOutputs<'_, T>) {
    crate::reference::forward(g, ops, out)
}

pub(crate) fn backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    dy: ArrayView4<'_, T>,
    grads: GradOutputs<'_, T>,
    gate: GradGate,
) {
    crate::reference::backward(g, ops, dy, grads, gate)
}
