//! The candle op against the core (forward and every gradient, through candle's backprop) on
//! random configurations, candle's backprop against finite differences in f64, half types, and
//! the module loading torchvision-named weights.

use candle_core::{DType, Device, Tensor, Var};
use deform_conv::conventions::torchvision::{
    deform_conv2d as core_fwd, deform_conv2d_backward as core_bwd, Params,
};
use deform_conv_candle::{deform_conv2d, DeformConv2d, DeformConvConfig};
use ndarray::{Array1, Array4};

/// SplitMix64: fresh inputs per case from a seed (printed on failure).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() * (hi - lo + 1) as f64) as usize % (hi - lo + 1)
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

struct Case {
    x: Array4<f64>,
    off: Array4<f64>,
    mask: Option<Array4<f64>>,
    w: Array4<f64>,
    b: Array1<f64>,
    gy: Array4<f64>,
    cfg: DeformConvConfig,
}

fn case(r: &mut Rng) -> Case {
    loop {
        let (gc, g) = (r.int(1, 2), r.int(1, 2));
        let c = gc * g * r.int(1, 2);
        let cout = gc * r.int(1, 3);
        let (kh, kw) = (r.int(1, 3), r.int(1, 3));
        let (h, w) = (r.int(2, 7), r.int(2, 7));
        let cfg = DeformConvConfig {
            stride: (r.int(1, 2), r.int(1, 2)),
            padding: (r.int(0, 2), r.int(0, 2)),
            dilation: (r.int(1, 2), r.int(1, 2)),
        };
        let out = |n: usize, p: usize, d: usize, k: usize, s: usize| {
            (n + 2 * p).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1)
        };
        let (Some(ho), Some(wo)) = (
            out(h, cfg.padding.0, cfg.dilation.0, kh, cfg.stride.0),
            out(w, cfg.padding.1, cfg.dilation.1, kw, cfg.stride.1),
        ) else {
            continue;
        };
        let n = r.int(1, 2);
        let with_mask = r.next() < 0.7;
        let mut f = |shape: (usize, usize, usize, usize), scale: f64| {
            Array4::from_shape_simple_fn(shape, || scale * r.normal())
        };
        let x = f((n, c, h, w), 1.0);
        let off = f((n, 2 * g * kh * kw, ho, wo), 1.5);
        let mask = with_mask.then(|| f((n, g * kh * kw, ho, wo), 1.0));
        let wt = f((cout, c / gc, kh, kw), 0.5);
        let gy = f((n, cout, ho, wo), 1.0);
        let b = Array1::from_shape_simple_fn(cout, || 0.3 * (gy[[0, 0, 0, 0]] + 1.0));
        return Case {
            x,
            off,
            mask,
            w: wt,
            b,
            gy,
            cfg,
        };
    }
}

fn t(a: &Array4<f64>, dt: DType) -> Var {
    let v = Tensor::from_vec(
        a.iter().copied().collect::<Vec<_>>(),
        a.shape(),
        &Device::Cpu,
    )
    .unwrap();
    Var::from_tensor(&v.to_dtype(dt).unwrap()).unwrap()
}

fn arr(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())) + 1.0;
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{name}: max error {err} (scale {scale})"
    );
}

#[test]
fn forward_and_every_gradient_match_the_core() {
    let seed = 20261124;
    let mut r = Rng(seed);
    for (i, dt, tol) in (0..16).map(|i| {
        (
            i,
            if i % 2 == 0 { DType::F64 } else { DType::F32 },
            if i % 2 == 0 { 1e-12 } else { 1e-5 },
        )
    }) {
        let c = case(&mut r);
        let (x, off, w) = (t(&c.x, dt), t(&c.off, dt), t(&c.w, dt));
        let mask = c.mask.as_ref().map(|m| t(m, dt));
        let b = Var::from_tensor(
            &Tensor::from_vec(c.b.to_vec(), c.b.len(), &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        )
        .unwrap();
        let y = deform_conv2d(&x, &off, &w, Some(&b), mask.as_deref(), &c.cfg).unwrap();
        let gy = t(&c.gy, dt);
        let grads = (y.clone() * gy.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let p = Params {
            stride: [c.cfg.stride.0 as i64, c.cfg.stride.1 as i64],
            padding: [c.cfg.padding.0 as i64, c.cfg.padding.1 as i64],
            dilation: [c.cfg.dilation.0 as i64, c.cfg.dilation.1 as i64],
            ..Params::default()
        };
        let want = core_fwd(
            c.x.view(),
            c.off.view(),
            c.w.view(),
            Some(c.b.view()),
            c.mask.as_ref().map(|m| m.view()),
            &p,
        )
        .unwrap();
        let g = core_bwd(
            c.gy.view(),
            c.x.view(),
            c.off.view(),
            c.w.view(),
            Some(c.b.view()),
            c.mask.as_ref().map(|m| m.view()),
            &p,
        )
        .unwrap();
        let ctx = format!("case {i} (seed {seed}, {dt:?})");
        close(
            &format!("{ctx} output"),
            &arr(&y),
            want.as_slice().unwrap(),
            tol,
        );
        close(
            &format!("{ctx} grad input"),
            &arr(grads.get(&x).unwrap()),
            g.input.as_slice().unwrap(),
            tol,
        );
        close(
            &format!("{ctx} grad offset"),
            &arr(grads.get(&off).unwrap()),
            g.offset.as_slice().unwrap(),
            tol,
        );
        close(
            &format!("{ctx} grad weight"),
            &arr(grads.get(&w).unwrap()),
            g.weight.as_slice().unwrap(),
            tol,
        );
        close(
            &format!("{ctx} grad bias"),
            &arr(grads.get(&b).unwrap()),
            g.bias.unwrap().as_slice().unwrap(),
            tol,
        );
        if let (Some(m), Some(gm)) = (&mask, g.mask) {
            close(
                &format!("{ctx} grad mask"),
                &arr(grads.get(m).unwrap()),
                gm.as_slice().unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn backprop_matches_finite_differences_in_f64() {
    let mut r = Rng(7);
    let c = case(&mut r);
    let mask = c.mask.clone().unwrap_or_else(|| {
        Array4::from_elem(
            (
                c.off.shape()[0],
                c.off.shape()[1] / 2,
                c.off.shape()[2],
                c.off.shape()[3],
            ),
            0.7,
        )
    });
    let loss = |x: &Array4<f64>, off: &Array4<f64>, m: &Array4<f64>, w: &Array4<f64>| -> f64 {
        let y = deform_conv2d(
            &t(x, DType::F64),
            &t(off, DType::F64),
            &t(w, DType::F64),
            None,
            Some(&t(m, DType::F64)),
            &c.cfg,
        )
        .unwrap();
        arr(&y).iter().zip(c.gy.iter()).map(|(a, b)| a * b).sum()
    };
    let (xv, ov, mv, wv) = (
        t(&c.x, DType::F64),
        t(&c.off, DType::F64),
        t(&mask, DType::F64),
        t(&c.w, DType::F64),
    );
    let y = deform_conv2d(&xv, &ov, &wv, None, Some(&mv), &c.cfg).unwrap();
    let grads = (y * t(&c.gy, DType::F64).as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let eps = 1e-6;
    for (which, var) in [(0, &xv), (1, &ov), (2, &mv), (3, &wv)] {
        let g = arr(grads.get(var).unwrap());
        let base = [&c.x, &c.off, &mask, &c.w][which];
        for k in 0..base.len().min(12) {
            let idx = (k * 7919) % base.len();
            let mut plus = [c.x.clone(), c.off.clone(), mask.clone(), c.w.clone()];
            let mut minus = plus.clone();
            plus[which].as_slice_mut().unwrap()[idx] += eps;
            minus[which].as_slice_mut().unwrap()[idx] -= eps;
            let fd = (loss(&plus[0], &plus[1], &plus[2], &plus[3])
                - loss(&minus[0], &minus[1], &minus[2], &minus[3]))
                / (2.0 * eps);
            // A sample sitting on an integer coordinate has a one-sided derivative: skip kinks.
            assert!(
                (fd - g[idx]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "input {which} element {idx}: backprop {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

#[test]
fn half_types_compute_in_f32_and_round_once() {
    let mut r = Rng(11);
    let c = case(&mut r);
    let want = {
        let y = deform_conv2d(
            &t(&c.x, DType::F32),
            &t(&c.off, DType::F32),
            &t(&c.w, DType::F32),
            None,
            None,
            &c.cfg,
        )
        .unwrap();
        arr(&y)
    };
    for (dt, eps) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
        let x = t(&c.x, dt).as_tensor().to_dtype(DType::F32).unwrap();
        let (o, w) = (
            t(&c.off, dt).as_tensor().to_dtype(DType::F32).unwrap(),
            t(&c.w, dt).as_tensor().to_dtype(DType::F32).unwrap(),
        );
        let exact = arr(&deform_conv2d(&x, &o, &w, None, None, &c.cfg).unwrap());
        let y = deform_conv2d(
            &t(&c.x, dt),
            &t(&c.off, dt),
            &t(&c.w, dt),
            None,
            None,
            &c.cfg,
        )
        .unwrap();
        assert_eq!(y.dtype(), dt);
        close(&format!("{dt:?}"), &arr(&y), &exact, eps);
        let _ = &want;
    }
}

#[test]
fn the_module_loads_torchvision_names() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.2, (6, 2, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.2, 6, &dev).unwrap();
    let tensors = std::collections::HashMap::from([
        ("dcn.weight".to_string(), w.clone()),
        ("dcn.bias".to_string(), b.clone()),
    ]);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let cfg = DeformConvConfig {
        padding: (1, 1),
        ..Default::default()
    };
    let layer = DeformConv2d::load(vb.pp("dcn"), 4, 6, (3, 3), 2, true, cfg).unwrap();
    let x = Tensor::randn(0f32, 1., (1, 4, 5, 5), &dev).unwrap();
    let off = Tensor::randn(0f32, 1., (1, 18, 5, 5), &dev).unwrap();
    let got = layer.forward(&x, &off, None).unwrap();
    let want = deform_conv2d(&x, &off, &w, Some(&b), None, &cfg).unwrap();
    assert_eq!(arr(&got), arr(&want));
    let vm = candle_nn::VarMap::new();
    let fresh = DeformConv2d::load(
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev),
        4,
        6,
        (3, 3),
        2,
        true,
        cfg,
    )
    .unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.contains(&"weight".to_string()) && names.contains(&"bias".to_string()),
        "{names:?}"
    );
    assert!(arr(fresh.weight())
        .iter()
        .all(|v| v.abs() <= 1.0 / (18f64).sqrt() + 1e-6));
}
