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
    // 32 input pixels at 20 canvas pixels each, plus axes, title and legend.
    assert!(
        img.width() > 640 && img.height() > 640,
        "{}x{}",
        img.width(),
        img.height()
    );
}

#[test]
fn run_torchvision_matches_the_library_and_writes_gradients() {
    let f = Files::new();
    std::fs::create_dir(f.at("grads")).unwrap();
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

/// Canvas pixels per input pixel in the viz test: large enough that the canvas is not widened
/// for the title, so the legend is the right 230 pixels.
const SCALE: i64 = 80;

fn viz_png(dir: &Path, name: &str, off: &Array4<f32>) -> image::RgbImage {
    write_npy(dir.join(format!("{name}.npy")), off).unwrap();
    let png = p(dir, &format!("{name}.png"));
    ok(&[
        "viz",
        "--offset",
        &p(dir, &format!("{name}.npy")),
        "--size",
        "6,6",
        "--pixels",
        "1,2",
        "--scale",
        &SCALE.to_string(),
        "--output",
        &png,
    ]);
    image::open(&png).unwrap().to_rgb8()
}

#[test]
fn viz_draws_the_points_where_they_belong() {
    let dir = tempfile::tempdir().unwrap();
    let colour = deform_conv_palette0();
    // Zero offsets: the 3x3 discs of output pixel (1, 2) sit on its regular grid; the centre of
    // their bounding box is the centre tap, input (1+1, 2+1) = (2, 3).
    let still = viz_png(dir.path(), "still", &Array4::<f32>::zeros((1, 18, 4, 4)));
    // The legend's disc of the same colour is in the right margin (230 canvas pixels wide).
    let plot_right = still.width() - 230;
    let hits: Vec<(u32, u32)> = still
        .enumerate_pixels()
        .filter(|(x, _, px)| px.0 == colour && *x < plot_right)
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(!hits.is_empty(), "no point drawn");
    let (x0, x1) = (
        hits.iter().map(|h| h.0).min().unwrap(),
        hits.iter().map(|h| h.0).max().unwrap(),
    );
    let (y0, y1) = (
        hits.iter().map(|h| h.1).min().unwrap(),
        hits.iter().map(|h| h.1).max().unwrap(),
    );
    // Two input pixels between the outer taps, plus a disc on each side.
    let span = 2 * SCALE as u32..2 * SCALE as u32 + 20;
    assert!(
        span.contains(&(x1 - x0)) && span.contains(&(y1 - y0)),
        "{x0}..{x1} x {y0}..{y1}"
    );
    let (cx, cy) = ((x0 + x1) as i64 / 2, (y0 + y1) as i64 / 2);
    // Every tap moved by (+0, +1) except the centre tap, moved by (+2, -1).
    let mut off = Array4::<f32>::zeros((1, 18, 4, 4));
    for t in 0..9 {
        off[[0, 2 * t + 1, 1, 2]] = 1.0;
    }
    off[[0, 8, 1, 2]] = 2.0;
    off[[0, 9, 1, 2]] = -1.0;
    let moved = viz_png(dir.path(), "moved", &off);
    assert_eq!(moved.dimensions(), still.dimensions());
    let at = |dy: i64, dx: i64| {
        moved
            .get_pixel((cx + SCALE * dx) as u32, (cy + SCALE * dy) as u32)
            .0
    };
    // Centre tap: (0, 0) + (2, -1). Tap (0, 0): (-1, -1) + (0, 1) = (-1, 0). Tap (2, 2): (1, 2).
    for (dy, dx) in [(2, -1), (-1, 0), (1, 2), (-1, 2)] {
        assert_eq!(
            at(dy, dx),
            colour,
            "no point at input offset ({dy}, {dx}) from the centre ({cy}, {cx})"
        );
    }
    // The bottom-left tap has left its grid point (1, -1): only its horizontal line starts there,
    // so a little below the grid point there is no disc any more (there was one at rest).
    let below = ((cx - SCALE) as u32, (cy + SCALE + 5) as u32);
    assert_eq!(still.get_pixel(below.0, below.1).0, colour);
    assert_ne!(moved.get_pixel(below.0, below.1).0, colour);
    // Nothing lands far outside.
    assert_ne!(at(-2, -2), colour);
}

fn deform_conv_palette0() -> [u8; 3] {
    [230, 25, 75]
}

/// A header that declares far more data than the file holds.
fn lying_npy(shape: &str) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    v.extend_from_slice(&header);
    v.extend_from_slice(&[0u8; 64]);
    v
}

#[test]
fn hostile_files_and_sizes_are_refused_before_anything_is_allocated_or_written() {
    let f = Files::new();
    let dir = f.dir.path();
    std::fs::write(dir.join("huge.npy"), lying_npy("(1, 1, 100000, 100000)")).unwrap();
    std::fs::write(
        dir.join("overflow.npy"),
        lying_npy("(4294967296, 4294967296, 4294967296, 1)"),
    )
    .unwrap();
    let run_with = |input: &str, offset: &str, extra: &[&str]| {
        let mut v = vec![
            "run".to_string(),
            "--convention".into(),
            "torchvision".into(),
            "--input".into(),
            input.into(),
            "--offset".into(),
            offset.into(),
            "--weight".into(),
            f.at("w.npy"),
            "--padding".into(),
            "1".into(),
            "--output".into(),
            f.at("y.npy"),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |v: Vec<String>, words: &str| {
        fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), words)
    };
    call(
        run_with(&f.at("huge.npy"), &f.at("off.npy"), &[]),
        "the file holds 64",
    );
    call(
        run_with(&f.at("x.npy"), &f.at("huge.npy"), &[]),
        "header declares shape [1, 1, 100000, 100000]",
    );
    call(
        run_with(&f.at("overflow.npy"), &f.at("off.npy"), &[]),
        "too large to exist",
    );
    // A wrong grad_output shape fails before the output is written.
    call(
        run_with(
            &f.at("x.npy"),
            &f.at("off.npy"),
            &["--grad-output", &f.at("x.npy")],
        ),
        "grad_output: expected shape",
    );
    assert!(!dir.join("y.npy").exists(), "a failed run wrote its output");
    // Folders are never created, for --output and --grad-dir alike; nothing is written.
    let gone = dir.join("no/such");
    call(
        run_with(
            &f.at("x.npy"),
            &f.at("off.npy"),
            &[
                "--grad-output",
                &f.at("gy.npy"),
                "--grad-dir",
                gone.to_str().unwrap(),
            ],
        ),
        "does not exist",
    );
    assert!(!dir.join("y.npy").exists() && !gone.exists());
    let mut v = run_with(&f.at("x.npy"), &f.at("off.npy"), &[]);
    v[12] = p(dir, "no/such/y.npy");
    call(v, "does not exist");
    // No temporary file is left behind by any of the failures.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // viz: huge sizes and scales are refused, a zero scale too, and no PNG is left.
    let png = p(dir, "v.png");
    for (flag, value, words) in [
        ("--size", "100000,100000", "--size"),
        ("--scale", "100000", "--scale"),
        ("--scale", "0", "--scale"),
    ] {
        fails(
            &[
                "viz",
                "--offset",
                &f.at("off.npy"),
                flag,
                value,
                "--output",
                &png,
            ],
            words,
        );
        assert!(!Path::new(&png).exists(), "{flag} {value} left a file");
    }
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

#[cfg(feature = "onnx")]
fn tract_data(case: &str, file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deform-conv-tract/tests/data")
        .join(case)
        .join(file)
        .to_string_lossy()
        .into_owned()
}

#[cfg(feature = "onnx")]
#[test]
fn onnx_runs_a_whole_model_and_refuses_bad_input_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_string_lossy().into_owned();
    let model = tract_data("dcn_block", "model.onnx");
    let x = format!("x={}", tract_data("dcn_block", "input_0.npy"));
    let out = ok(&["onnx", &model, "--input", &x, "--output-dir", &out_dir]);
    assert!(
        out.contains("output y") && out.contains("[2, 6, 9, 8]") && out.contains("ran in"),
        "{out}"
    );
    let got: ArrayD<f32> = read_npy(dir.path().join("y.npy")).unwrap();
    let want: ArrayD<f32> = read_npy(tract_data("dcn_block", "output_0.npy")).unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5 * scale, "onnxruntime vs ours: {err}");
    std::fs::remove_file(dir.path().join("y.npy")).unwrap();
    let wrong_shape = format!("x={}", tract_data("mmcv_modulated", "input_0.npy"));
    let not_onnx = tract_data("dcn_block", "input_0.npy");
    let unsupported = tract_data("unsupported_op", "model.onnx");
    let ux = format!("x={}", tract_data("unsupported_op", "input_0.npy"));
    for (args, words) in [
        (
            vec!["onnx", &model, "--output-dir", &out_dir],
            "--input x=FILE.npy: missing",
        ),
        (
            vec![
                "onnx",
                &model,
                "--input",
                &wrong_shape,
                "--output-dir",
                &out_dir,
            ],
            "input x",
        ),
        (
            vec![
                "onnx",
                &model,
                "--input",
                &x,
                "--input",
                "z=a.npy",
                "--output-dir",
                &out_dir,
            ],
            "no such input",
        ),
        (
            vec!["onnx", &not_onnx, "--input", &x, "--output-dir", &out_dir],
            "not an ONNX model",
        ),
        (
            vec![
                "onnx",
                &unsupported,
                "--input",
                &ux,
                "--output-dir",
                &out_dir,
            ],
            "unsupported operator FancyWarp",
        ),
        (
            vec![
                "onnx",
                &model,
                "--input",
                &x,
                "--output-dir",
                "/no/such/dir",
            ],
            "does not exist",
        ),
    ] {
        fails(&args, words);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{args:?} wrote a file"
        );
    }
}

#[cfg(feature = "onnx")]
fn hostile(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hostile_onnx")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

#[cfg(feature = "onnx")]
/// The red team's models (tools/make_hostile_onnx.py): each is one clear error line (exit 2, no
/// panic) and writes nothing; a model whose weight is in a file beside it runs.
#[test]
fn hostile_onnx_models_are_errors_and_external_data_stays_in_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_string_lossy().into_owned();
    let x = format!("x={}", hostile("x.npy"));
    for (model, words) in [
        (
            "missing_output",
            "graph output \"nothing\" is produced by no node",
        ),
        ("huge_constant", "huge_constant.onnx"),
        ("huge_expand", "needs more than this machine's"),
        ("huge_tile", "needs more than this machine's"),
        ("huge_range", "huge_range.onnx"),
        ("conv_stride_0", "conv_stride_0.onnx"),
        ("slice_step_0", "slice_step_0.onnx"),
        ("bad_perm", "bad_perm.onnx"),
        ("maxpool_kernel_0", "maxpool_kernel_0.onnx"),
        ("negative_pad", "negative_pad.onnx"),
        ("external_outside", "not a file inside the model's folder"),
        (
            "colliding_outputs",
            "two outputs would be written to the same file",
        ),
    ] {
        let m = hostile(&format!("{model}.onnx"));
        fails(
            &["onnx", &m, "--input", &x, "--output-dir", &out_dir],
            words,
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{model} wrote a file"
        );
    }
    let m = hostile("external_inside.onnx");
    ok(&["onnx", &m, "--input", &x, "--output-dir", &out_dir]);
    let y: ArrayD<f32> = read_npy(dir.path().join("y.npy")).unwrap();
    let xs: ArrayD<f32> = read_npy(hostile("x.npy")).unwrap();
    assert_eq!(y, xs.mapv(|v| 2.0 * v), "the external weight is 2");
}

/// Outputs never replace what is not a regular file (a symlink, a FIFO, a folder), two outputs
/// never name one file, and a refused command leaves every target as it was.
#[cfg(unix)]
#[test]
fn outputs_replace_only_regular_files_and_never_collide() {
    let f = Files::new();
    let (xp, offp, wp) = (f.at("x.npy"), f.at("off.npy"), f.at("w.npy"));
    let run_to = |output: &str, extra: &[&str]| {
        let mut v = vec![
            "run",
            "--convention",
            "torchvision",
            "--input",
            &xp,
            "--offset",
            &offp,
            "--weight",
            &wp,
            "--padding",
            "1",
            "--output",
            output,
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let call = |v: Vec<String>, words: &str| {
        fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), words)
    };
    // A symlink to a regular file: refused, and neither the link nor its target changes.
    let target = f.at("target.npy");
    std::fs::write(&target, b"keep").unwrap();
    let link = f.at("link.npy");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    call(run_to(&link, &[]), "is a symbolic link");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A FIFO and a folder.
    let fifo = f.at("fifo.npy");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    call(run_to(&fifo, &[]), "is a FIFO");
    std::fs::create_dir(f.at("folder.npy")).unwrap();
    call(run_to(&f.at("folder.npy"), &[]), "is a folder");
    // A later target that is a folder: nothing is written, not even the earlier output.
    let (y, gy, grads) = (f.at("y.npy"), f.at("gy.npy"), f.at("grads"));
    std::fs::create_dir(&grads).unwrap();
    std::fs::create_dir(format!("{grads}/grad_weight.npy")).unwrap();
    let with_grads = ["--grad-output", gy.as_str(), "--grad-dir", grads.as_str()];
    call(run_to(&y, &with_grads), "is a folder");
    assert!(!Path::new(&y).exists(), "the first output was written");
    std::fs::remove_dir(format!("{grads}/grad_weight.npy")).unwrap();
    // The same file twice, also through another spelling of its folder.
    let again = format!(
        "{}/../{}/grads/grad_input.npy",
        f.dir.path().display(),
        f.dir.path().file_name().unwrap().to_string_lossy()
    );
    call(run_to(&again, &with_grads), "the same file");
    assert!(!Path::new(&y).exists());
    assert_eq!(std::fs::read_dir(&grads).unwrap().count(), 0);
    // No temporary file is left behind by any of them.
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A regular file is replaced.
    std::fs::write(&y, b"old").unwrap();
    ok(&run_to(&y, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let _: Array4<f32> = read_npy(&y).unwrap();
}

/// A .npy whose zero dimension hides an impossible one, and a thread count no system starts.
#[test]
fn empty_but_impossible_shapes_and_absurd_thread_counts_are_errors() {
    let f = Files::new();
    std::fs::write(
        f.at("zero.npy"),
        lying_npy("(0, 2, 4611686018427387904, 8)"),
    )
    .unwrap();
    let zero = f.at("zero.npy");
    let y = f.at("y.npy");
    let args = |input: &str, threads: &str| {
        vec![
            "--threads".to_string(),
            threads.into(),
            "run".into(),
            "--convention".into(),
            "torchvision".into(),
            "--input".into(),
            input.into(),
            "--offset".into(),
            f.at("off.npy"),
            "--weight".into(),
            f.at("w.npy"),
            "--padding".into(),
            "1".into(),
            "--output".into(),
            y.clone(),
        ]
    };
    let call = |v: Vec<String>, words: &str| {
        fails(&v.iter().map(String::as_str).collect::<Vec<_>>(), words)
    };
    call(args(&zero, "1"), "too large to exist");
    call(
        args(&f.at("x.npy"), "100000"),
        "--threads: threads: expected a thread count of at most 1024",
    );
    assert!(!Path::new(&y).exists());
}
