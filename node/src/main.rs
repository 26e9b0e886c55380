//! The `gatehouse` binary. Everything it runs lives in the `gatehouse_node` library; this file and
//! `cli.rs` only parse the command line and wire the pieces together.

mod cli;
// TODO(merge): remove together with the file once the parallel contracts are merged.

fn main() -> std::process::ExitCode {
    cli::main()
}
