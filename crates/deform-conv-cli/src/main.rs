//! `deform-conv`: the command line of deform-conv.
//!
//! * `demo`    the torch_npu documentation example, forward and backward, checked and drawn;
//! * `run`     .npy inputs in a named convention → .npy output, deformed image, gradients;
//! * `convert` offsets interleaved ⇄ packed, NCHW ⇄ NHWC, OIHW ⇄ HWCN;
//! * `bench`   the benchmark shapes built in: times, GFLOP/s, ratio to the reference path;
//! * `viz`     the sampling points of chosen output pixels over an image, as a PNG;
//! * `onnx`    a whole ONNX model with deformable convolutions, through tract (built with
//!   `--features onnx`; without it the subcommand says how to get it).
//!
//! Every error is one line on stderr and exit status 2; nothing panics on bad files.

mod bench;
mod data;
mod demo;
mod npy;
#[cfg(feature = "onnx")]
mod onnx;
mod outputs;
mod run;
mod viz;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exact, fast deformable convolution (DCN v1/v2) on the CPU.
#[derive(Parser)]
#[command(name = "deform-conv", version, about, long_about = None)]
struct Cli {
    /// Engine threads (default: one per core, or DEFORM_CONV_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the torch_npu documentation example forward and backward, check it against the
    /// reference path, print shapes, time and GFLOP/s, and draw its sampling points.
    Demo(demo::DemoArgs),
    /// Run one convolution from .npy files in a named convention.
    Run(run::RunArgs),
    /// Convert offsets, masks, images or weights between layouts.
    Convert(run::ConvertArgs),
    /// Benchmark the built-in shapes (forward and backward) against the reference path.
    Bench(bench::BenchArgs),
    /// Draw the sampling points of output pixels over an image (PNG).
    Viz(viz::VizArgs),
    /// Run a whole ONNX model (DeformConv and mmcv's MMCVModulatedDeformConv2d included) with tract.
    #[cfg(feature = "onnx")]
    Onnx(onnx::OnnxArgs),
    /// Run a whole ONNX model through tract: this binary was built without it (see --help).
    #[cfg(not(feature = "onnx"))]
    #[command(disable_help_flag = true)]
    Onnx {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.threads.map(deform_conv::engine::set_num_threads) {
        Some(Err(e)) => Err(anyhow::anyhow!("--threads: {e}")),
        _ => run(cli.cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Demo(a) => demo::demo(&a),
        Cmd::Run(a) => run::run(&a),
        Cmd::Convert(a) => run::convert(&a),
        Cmd::Bench(a) => bench::bench(&a),
        Cmd::Viz(a) => viz::viz(&a),
        #[cfg(feature = "onnx")]
        Cmd::Onnx(a) => onnx::onnx(&a),
        #[cfg(not(feature = "onnx"))]
        Cmd::Onnx { .. } => Err(anyhow::anyhow!(
            "onnx: this binary was built without tract; build it with the feature: \
             cargo run --release -p deform-conv-cli --features onnx -- onnx ..."
        )),
    }
}
