//! The `gatehouse` binary. Everything it runs lives in the `gatehouse_node` library; this file and
//! `cli.rs` only parse the command line and wire the pieces together.

mod cli;

/// mimalloc instead of glibc malloc: the proxy allocates and frees small buffers on every request,
/// and glibc's arena consolidation showed up in profiles (docs/performance.md).
#[global_allocator]
static ALLOCATOR: gatehouse_node::allocator::Allocator = gatehouse_node::allocator::Allocator;

fn main() -> std::process::ExitCode {
    cli::main()
}
