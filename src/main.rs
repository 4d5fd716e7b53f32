//! The `driftd` binary: a thin shell over the library.

fn main() -> std::process::ExitCode {
    driftd::cli::main()
}
