//! The `drover` binary: everything lives in the library; see `drover::cli`.

fn main() -> std::process::ExitCode {
    drover::cli::main()
}
