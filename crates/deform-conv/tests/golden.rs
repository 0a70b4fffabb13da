//! Every convention, both backends, against torchvision's float64 autograd (tools/make_golden.py).

use deform_conv::conventions::{mindspore, npu, onnx, torchvision, Layout};
use deform_conv::layout::{
    hwcn_to_oihw, interleaved_to_packed, nchw_to_nhwc, nhwc_to_nchw, oihw_to_hwcn,
    packed_to_interleaved,
};
use deform_conv::{Backend, DeformError};
use ndarray::{Array1, Array4, ArrayD, Ix1, Ix4};
use ndarray_npy::NpzReader;
use std::collections::HashMap;
use std::fs::File;

struct Case {
    name: String,
    p: Vec<i64>,
    a: HashMap<String, ArrayD<f64>>,
}

impl Case {
    fn t4(&self, k: &str) -> Array4<f64> {
        self.a[k].clone().into_dimensionality::<Ix4>().unwrap()
    }
    fn opt4(&self, k: &str) -> Option<Array4<f64>> {
        self.a
            .get(k)
            .map(|a| a.clone().into_dimensionality::<Ix4>().unwrap())
    }
    fn opt1(&self, k: &str) -> Option<Array1<f64>> {
        self.a
            .get(k)
            .map(|a| a.clone().into_dimensionality::<Ix1>().unwrap())
    }
    fn groups(&self) -> (i64, i64) {
        let (x, w, off) = (self.t4("input"), self.t4("weight"), self.t4("offset"));
        let gc = x.shape()[1] / w.shape()[1];
        let g = off.shape()[1] / (2 * w.shape()[2] * w.shape()[3]);
        (gc as i64, g as i64)
    }
    fn symmetric(&self) -> bool {
        self.p[2] == self.p[3] && self.p[4] == self.p[5]
    }
    /// The window does not fit: only torchvision's truncating rounding accepts the case.
    fn truncation_only(&self) -> bool {
        let (x, w) = (self.t4("input"), self.t4("weight"));
        let num_h = x.shape()[2] as i64 + self.p[2] + self.p[3]
            - (self.p[6] * (w.shape()[2] as i64 - 1) + 1);
        let num_w = x.shape()[3] as i64 + self.p[4] + self.p[5]
            - (self.p[7] * (w.shape()[3] as i64 - 1) + 1);
        num_h < 0 || num_w < 0
    }
    fn packed_attrs(&self, backend: Backend) -> mindspore::Attributes {
        let w = self.t4("weight");
        let (gc, g) = self.groups();
        mindspore::Attributes {
            kernel_size: vec![w.shape()[2] as i64, w.shape()[3] as i64],
            strides: vec![1, 1, self.p[0], self.p[1]],
            padding: vec![self.p[2], self.p[3], self.p[4], self.p[5]],
            dilations: vec![1, 1, self.p[6], self.p[7]],
            groups: gc,
            deformable_groups: g,
            modulated: true,
            backend,
        }
    }
    fn packed_offset(&self) -> Array4<f64> {
        interleaved_to_packed(
            self.t4("offset").view(),
            self.opt4("mask").as_ref().map(|m| m.view()),
        )
        .unwrap()
    }
}

fn cases() -> Vec<Case> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let mut out = vec![];
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let mut npz = NpzReader::new(File::open(&path).unwrap()).unwrap();
        let mut a = HashMap::new();
        let mut p = vec![];
        for name in npz.names().unwrap() {
            let key = name.trim_end_matches(".npy").to_string();
            if key == "params" {
                let v: ArrayD<i64> = npz.by_name(&name).unwrap();
                p = v.iter().copied().collect();
            } else {
                a.insert(
                    key,
                    npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(&name)
                        .unwrap(),
                );
            }
        }
        out.push(Case {
            name: path.file_stem().unwrap().to_string_lossy().into(),
            p,
            a,
        });
    }
    assert!(
        out.len() >= 10,
        "golden files missing: run tools/make_golden.py"
    );
    out
}

/// `|got - want| <= 1e-9 * (1 + max|want|)` elementwise; shapes must agree.
fn close<D: ndarray::Dimension>(
    case: &str,
    what: &str,
    got: &ndarray::Array<f64, D>,
    want: &ndarray::Array<f64, D>,
) {
    assert_eq!(got.shape(), want.shape(), "{case}: {what} shape");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = 1e-9 * (1.0 + scale);
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{case}: {what}[{i}] = {g}, torchvision {w} (tol {tol})"
        );
    }
}

const BACKENDS: [Backend; 2] = [Backend::Reference, Backend::Engine];

#[test]
fn torchvision_convention_matches_torchvision() {
    for c in cases().iter().filter(|c| c.symmetric()) {
        for backend in BACKENDS {
            let p = torchvision::Params {
                stride: [c.p[0], c.p[1]],
                padding: [c.p[2], c.p[4]],
                dilation: [c.p[6], c.p[7]],
                backend,
                ..Default::default()
            };
            let (x, off, w) = (c.t4("input"), c.t4("offset"), c.t4("weight"));
            let (b, m) = (c.opt1("bias"), c.opt4("mask"));
            let y = torchvision::deform_conv2d(
                x.view(),
                off.view(),
                w.view(),
                b.as_ref().map(|b| b.view()),
                m.as_ref().map(|m| m.view()),
                &p,
            )
            .unwrap();
            close(&c.name, "output", &y, &c.t4("output"));
            let g = torchvision::deform_conv2d_backward(
                c.t4("grad_output").view(),
                x.view(),
                off.view(),
                w.view(),
                b.as_ref().map(|b| b.view()),
                m.as_ref().map(|m| m.view()),
                &p,
            )
            .unwrap();
            close(&c.name, "grad input", &g.input, &c.t4("g_input"));
            close(&c.name, "grad offset", &g.offset, &c.t4("g_offset"));
            close(&c.name, "grad weight", &g.weight, &c.t4("g_weight"));
            assert_eq!(g.mask.is_some(), m.is_some());
            if let Some(gm) = &g.mask {
                close(&c.name, "grad mask", gm, &c.t4("g_mask"));
            }
            assert_eq!(g.bias.is_some(), b.is_some());
            if let Some(gb) = &g.bias {
                close(&c.name, "grad bias", gb, &c.opt1("g_bias").unwrap());
            }
        }
    }
}

#[test]
fn onnx_convention_matches_torchvision() {
    for c in cases() {
        let (gc, g) = c.groups();
        let attrs = onnx::Attributes {
            dilations: Some(vec![c.p[6], c.p[7]]),
            group: gc,
            kernel_shape: None,
            offset_group: g,
            pads: Some(vec![c.p[2], c.p[4], c.p[3], c.p[5]]),
            strides: Some(vec![c.p[0], c.p[1]]),
            backend: Backend::Engine,
        };
        let (x, off, w) = (c.t4("input"), c.t4("offset"), c.t4("weight"));
        let (b, m) = (c.opt1("bias"), c.opt4("mask"));
        let r = onnx::deform_conv(
            x.view(),
            w.view(),
            off.view(),
            b.as_ref().map(|b| b.view()),
            m.as_ref().map(|m| m.view()),
            &attrs,
        );
        if c.truncation_only() {
            assert!(
                matches!(r, Err(DeformError::OutputSize { .. })),
                "{}: {r:?}",
                c.name
            );
            continue;
        }
        close(&c.name, "onnx output", &r.unwrap(), &c.t4("output"));
    }
}

#[test]
fn mindspore_convention_matches_torchvision() {
    for c in cases() {
        for backend in BACKENDS {
            let attrs = c.packed_attrs(backend);
            let (x, w, packed, b) = (
                c.t4("input"),
                c.t4("weight"),
                c.packed_offset(),
                c.opt1("bias"),
            );
            let r = mindspore::deformable_conv2d(
                x.view(),
                w.view(),
                packed.view(),
                b.as_ref().map(|b| b.view()),
                &attrs,
            );
            if c.truncation_only() {
                assert!(
                    matches!(r, Err(DeformError::OutputSize { .. })),
                    "{}: {r:?}",
                    c.name
                );
                continue;
            }
            close(&c.name, "mindspore output", &r.unwrap(), &c.t4("output"));
            let g = mindspore::deformable_conv2d_backward(
                c.t4("grad_output").view(),
                x.view(),
                w.view(),
                packed.view(),
                b.as_ref().map(|b| b.view()),
                &attrs,
            )
            .unwrap();
            let (g_off, g_mask) = packed_to_interleaved(g.offset.view()).unwrap();
            close(&c.name, "mindspore grad offset", &g_off, &c.t4("g_offset"));
            if let Some(want) = c.opt4("g_mask") {
                close(&c.name, "mindspore grad mask", &g_mask, &want);
            }
            close(&c.name, "mindspore grad input", &g.input, &c.t4("g_input"));
            close(
                &c.name,
                "mindspore grad weight",
                &g.weight,
                &c.t4("g_weight"),
            );
        }
    }
}

#[test]
fn npu_convention_matches_torchvision_with_gate_in_both_layouts() {
    for c in cases().iter().filter(|c| !c.truncation_only()) {
        for backend in BACKENDS {
            for layout in [Layout::Nchw, Layout::Nhwc] {
                let a = npu::NpuAttributes {
                    attrs: c.packed_attrs(backend),
                    layout,
                };
                let (x, w, packed, b, gy) = (
                    c.t4("input"),
                    c.t4("weight"),
                    c.packed_offset(),
                    c.opt1("bias"),
                    c.t4("grad_output"),
                );
                let nhwc = layout == Layout::Nhwc;
                let to = |a: &Array4<f64>| {
                    if nhwc {
                        nchw_to_nhwc(a.view()).unwrap()
                    } else {
                        a.clone()
                    }
                };
                let back = |a: &Array4<f64>| {
                    if nhwc {
                        nhwc_to_nchw(a.view()).unwrap()
                    } else {
                        a.clone()
                    }
                };
                let wl = if nhwc {
                    oihw_to_hwcn(w.view()).unwrap()
                } else {
                    w.clone()
                };
                let (y, d) = npu::npu_deformable_conv2d(
                    to(&x).view(),
                    wl.view(),
                    to(&packed).view(),
                    b.as_ref().map(|b| b.view()),
                    &a,
                )
                .unwrap();
                let (y, d) = (back(&y), back(&d));
                close(&c.name, "npu output", &y, &c.t4("output"));
                // The deformed image: a plain conv with stride = kernel reproduces Y.
                let (kh, kw) = (w.shape()[2], w.shape()[3]);
                let cg = w.shape()[1];
                let coutg = w.shape()[0] / (x.shape()[1] / cg);
                let from_d = Array4::from_shape_fn(y.raw_dim(), |(n, o, oh, ow)| {
                    let q = o / coutg;
                    let mut s = b.as_ref().map_or(0.0, |b| b[o]);
                    for cc in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                s += w[[o, cc, i, j]]
                                    * d[[n, q * cg + cc, oh * kh + i, ow * kw + j]];
                            }
                        }
                    }
                    s
                });
                close(&c.name, "conv(D, stride=k)", &from_d, &c.t4("output"));
                let g = npu::npu_deformable_conv2dbk(
                    to(&x).view(),
                    to(&gy).view(),
                    to(&d).view(),
                    wl.view(),
                    to(&packed).view(),
                    &a,
                )
                .unwrap();
                let (g_off, g_mask) = packed_to_interleaved(back(&g.offset).view()).unwrap();
                close(
                    &c.name,
                    "npu grad offset (gated)",
                    &g_off,
                    &c.t4("g_offset_gated"),
                );
                if let Some(want) = c.opt4("g_mask") {
                    close(&c.name, "npu grad mask", &g_mask, &want);
                }
                close(&c.name, "npu grad input", &back(&g.input), &c.t4("g_input"));
                let gw = if nhwc {
                    hwcn_to_oihw(g.weight.view()).unwrap()
                } else {
                    g.weight.clone()
                };
                close(&c.name, "npu grad weight", &gw, &c.t4("g_weight"));
                let want_gb = Array1::from_shape_fn(w.shape()[0], |o| {
                    gy.index_axis(ndarray::Axis(1), o).sum()
                });
                close(&c.name, "npu grad bias", &g.bias, &want_gb);
            }
        }
    }
}
