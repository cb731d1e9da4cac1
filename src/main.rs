//! The `mdfuse` command: create, examine, mount and stop mirrored arrays.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
