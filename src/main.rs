//! The `tollgate` binary: everything lives in the library; see `tollgate::cli`.

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
