//! Every subcommand, run as a user runs it, including bad files.

use deform_conv::conventions::torchvision::{deform_conv2d, Params};
use ndarray::{Array1, Array3, Array4, ArrayD};
use ndarray_npy::{read_npy, write_npy};
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deform-conv"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{args:?} failed:\n{so}\n{se}");
    so.into_owned()
}

/// Fails with exit code 2 and one clear error line, no panic.
fn fails(args: &[&str], words: &str) {
    let out = run(args);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {se}");
    assert!(
        se.starts_with("error: ") && se.contains(words),
        "{args:?}: {se}"
    );
    assert!(!se.contains("panicked"), "{args:?}: {se}");
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn fill(shape: (usize, usize, usize, usize), seed: usize) -> Array4<f32> {
    Array4::from_shape_fn(shape, |(a, b, c, d)| {
        (((a * 131 + b * 71 + c * 29 + d * 7 + seed * 13) % 97) as f32 / 48.5) - 1.0
    })
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_npy(dir.path().join("x.npy"), &fill((2, 4, 6, 5), 1)).unwrap();
        write_npy(dir.path().join("w.npy"), &fill((3, 4, 3, 3), 2)).unwrap();
        write_npy(dir.path().join("off.npy"), &(fill((2, 18, 6, 5), 3) * 2.5)).unwrap();
        write_npy(dir.path().join("mask.npy"), &fill((2, 9, 6, 5), 4)).unwrap();
        write_npy(
            dir.path().join("b.npy"),
            &Array1::from(vec![0.5f32, -0.25, 1.0]),
        )
        .unwrap();
        write_npy(dir.path().join("gy.npy"), &fill((2, 3, 6, 5), 5)).unwrap();
        Files { dir }
    }
    fn at(&self, name: &str) -> String {
        p(self.dir.path(), name)
    }
}

#[test]
fn demo_prints_shapes_and_writes_its_picture() {
    let dir = tempfile::tempdir().unwrap();
    let png = p(dir.path(), "demo.png");
    let out = ok(&["demo", "--picture", &png]);
    assert!(
        out.contains("(16, 32, 32, 32)") && out.contains("(16, 32, 160, 160)"),
        "{out}"
    );
    assert!(
        out.contains("GFLOP/s") && out.contains("reference check"),
        "{out}"
    );
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (640, 640));
}

#[test]
fn run_torchvision_matches_the_library_and_writes_gradients() {
    let f = Files::new();
    let out = ok(&[
        "run",
        "--convention",
        "torchvision",
        "--input",
        &f.at("x.npy"),
        "--offset",
        &f.at("off.npy"),
        "--weight",
        &f.at("w.npy"),
        "--bias",
        &f.at("b.npy"),
        "--mask",
        &f.at("mask.npy"),
        "--padding",
        "1",
        "--output",
        &f.at("y.npy"),
        "--grad-output",
        &f.at("gy.npy"),
        "--grad-dir",
        &f.at("grads"),
    ]);
    assert!(out.contains("grad_mask.npy"), "{out}");
    let y: Array4<f32> = read_npy(f.at("y.npy")).unwrap();
    let (x, w, off, m): (Array4<f32>, Array4<f32>, Array4<f32>, Array4<f32>) = (
        read_npy(f.at("x.npy")).unwrap(),
        read_npy(f.at("w.npy")).unwrap(),
        read_npy(f.at("off.npy")).unwrap(),
        read_npy(f.at("mask.npy")).unwrap(),
    );
    let b: Array1<f32> = read_npy(f.at("b.npy")).unwrap();
    let want = deform_conv2d(
        x.view(),
        off.view(),
        w.view(),
        Some(b.view()),
        Some(m.view()),
        &Params {
            padding: [1, 1],
            ..Params::default()
        },
    )
    .unwrap();
    assert_eq!(y, want);
    for g in [
        "grad_input",
        "grad_offset",
        "grad_mask",
        "grad_weight",
        "grad_bias",
    ] {
        let a: ArrayD<f32> = read_npy(Path::new(&f.at("grads")).join(format!("{g}.npy"))).unwrap();
        assert!(
            a.iter().all(|v| v.is_finite()) && a.iter().any(|v| *v != 0.0),
            "{g}"
        );
    }
}

#[test]
fn run_npu_nhwc_and_convert_round_trip() {
    let f = Files::new();
    ok(&[
        "convert",
        "interleaved-to-packed",
        "--input",
        &f.at("off.npy"),
        "--mask",
        &f.at("mask.npy"),
        "--output",
        &f.at("packed.npy"),
    ]);
    ok(&[
        "convert",
        "packed-to-interleaved",
        "--input",
        &f.at("packed.npy"),
        "--output",
        &f.at("off2.npy"),
        "--mask-output",
        &f.at("mask2.npy"),
    ]);
    let (a, b): (Array4<f32>, Array4<f32>) = (
        read_npy(f.at("off.npy")).unwrap(),
        read_npy(f.at("off2.npy")).unwrap(),
    );
    assert_eq!(a, b);
    ok(&[
        "convert",
        "nchw-to-nhwc",
        "--input",
        &f.at("x.npy"),
        "--output",
        &f.at("x_nhwc.npy"),
    ]);
    ok(&[
        "convert",
        "nchw-to-nhwc",
        "--input",
        &f.at("packed.npy"),
        "--output",
        &f.at("packed_nhwc.npy"),
    ]);
    ok(&[
        "convert",
        "oihw-to-hwcn",
        "--input",
        &f.at("w.npy"),
        "--output",
        &f.at("w_hwcn.npy"),
    ]);
    let common = ["--padding", "1,1,1,1", "--bias", &f.at("b.npy")];
    ok(&[
        &[
            "run",
            "--convention",
            "npu",
            "--input",
            &f.at("x.npy"),
            "--offset",
            &f.at("packed.npy"),
            "--weight",
            &f.at("w.npy"),
            "--output",
            &f.at("y_npu.npy"),
            "--deformed",
            &f.at("d_npu.npy"),
        ][..],
        &common[..],
    ]
    .concat());
    ok(&[
        &[
            "run",
            "--convention",
            "npu-nhwc",
            "--input",
            &f.at("x_nhwc.npy"),
            "--offset",
            &f.at("packed_nhwc.npy"),
            "--weight",
            &f.at("w_hwcn.npy"),
            "--output",
            &f.at("y_nhwc.npy"),
            "--deformed",
            &f.at("d_nhwc.npy"),
        ][..],
        &common[..],
    ]
    .concat());
    let (y, yl): (Array4<f32>, Array4<f32>) = (
        read_npy(f.at("y_npu.npy")).unwrap(),
        read_npy(f.at("y_nhwc.npy")).unwrap(),
    );
    assert_eq!(yl.shape(), &[2, 6, 5, 3]);
    assert_eq!(yl.permuted_axes([0, 3, 1, 2]), y);
    let d: Array4<f32> = read_npy(f.at("d_nhwc.npy")).unwrap();
    assert_eq!(d.shape(), &[2, 18, 15, 4]);
}

#[test]
fn bench_prints_a_table() {
    let out = ok(&[
        "bench",
        "--shapes",
        "npu_doc_example",
        "--repeat",
        "1",
        "--no-reference",
    ]);
    assert!(
        out.contains("npu_doc_example") && out.contains("GFLOP/s"),
        "{out}"
    );
}

#[test]
fn viz_draws_the_points_where_they_belong() {
    let dir = tempfile::tempdir().unwrap();
    // One output pixel (1, 2), 3x3 kernel, stride 1, no padding: offsets move every tap by
    // (+0.0, +1.0) except the centre tap, moved by (+2.0, -1.0).
    let mut off = Array4::<f32>::zeros((1, 18, 4, 4));
    for t in 0..9 {
        off[[0, 2 * t + 1, 1, 2]] = 1.0;
    }
    off[[0, 8, 1, 2]] = 2.0;
    off[[0, 9, 1, 2]] = -1.0;
    write_npy(dir.path().join("off.npy"), &off).unwrap();
    let png = p(dir.path(), "viz.png");
    ok(&[
        "viz",
        "--offset",
        &p(dir.path(), "off.npy"),
        "--size",
        "6,6",
        "--pixels",
        "1,2",
        "--scale",
        "10",
        "--output",
        &png,
    ]);
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (60, 60));
    let colour = deform_conv_palette0();
    // Tap (0, 0): grid (1, 2) + (0, 1) = (1, 3) → canvas (15, 35). Centre tap: (2, 3) + (2, -1) = (4, 2) → (45, 25).
    for (y, x) in [(15, 35), (45, 25), (15, 45), (35, 55)] {
        assert_eq!(
            img.get_pixel(x, y).0,
            colour,
            "no point at canvas ({y}, {x})"
        );
    }
    // Where no point was sampled, no point colour.
    assert_ne!(img.get_pixel(5, 5).0, colour);
    assert_ne!(
        img.get_pixel(5, 55).0,
        colour,
        "nothing was sampled near input pixel (5, 0)"
    );
}

fn deform_conv_palette0() -> [u8; 3] {
    [230, 25, 75]
}

#[test]
fn bad_files_get_one_clear_line() {
    let f = Files::new();
    let dir = f.dir.path();
    std::fs::write(dir.join("text.npy"), "not an npy file").unwrap();
    write_npy(dir.join("int.npy"), &Array4::<i32>::zeros((2, 4, 6, 5))).unwrap();
    write_npy(dir.join("three.npy"), &Array3::<f32>::zeros((4, 6, 5))).unwrap();
    write_npy(dir.join("x64.npy"), &fill((2, 4, 6, 5), 1).mapv(f64::from)).unwrap();
    let base = |input: &str| -> Vec<String> {
        [
            "run",
            "--convention",
            "torchvision",
            "--input",
            input,
            "--offset",
            &f.at("off.npy"),
            "--weight",
            &f.at("w.npy"),
            "--padding",
            "1",
            "--output",
            &f.at("y.npy"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let call = |v: Vec<String>, words: &str| {
        fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), words)
    };
    call(base(&f.at("missing.npy")), "cannot open");
    call(base(&f.at("text.npy")), "not a readable .npy file");
    call(
        base(&f.at("int.npy")),
        "expected dtype float16, float32 or float64",
    );
    call(base(&f.at("three.npy")), "expected a 4-D tensor");
    call(
        base(&f.at("x64.npy")),
        "expected dtype float64 (the input's), got float32",
    );
    let mut v = base(&f.at("x.npy"));
    v[6] = f.at("mask.npy");
    call(v, "offset: expected shape");
    let mut v = base(&f.at("x.npy"));
    v.extend(["--groups".into(), "2".into()]);
    call(v, "torchvision infers");
    fails(
        &["viz", "--offset", &f.at("text.npy")],
        "not a readable .npy file",
    );
    fails(
        &["viz", "--offset", &f.at("off.npy"), "--pixels", "99,0"],
        "--pixels",
    );
    fails(
        &[
            "convert",
            "nchw-to-nhwc",
            "--input",
            &f.at("three.npy"),
            "--output",
            &f.at("o.npy"),
        ],
        "4-D",
    );
    fails(&["bench", "--shapes", "nope"], "--shapes");
}
