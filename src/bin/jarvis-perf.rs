//! `jarvis-perf`: the standalone command line (no Python needed). See `jarvis-perf --help`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(jarvis_performance::cli::main(std::env::args()))
}
