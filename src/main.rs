//! The `mdfuse` command: create, examine, mount and stop mirrored arrays.
//! Run as `mount.mdfuse` (a link to it), it is mount(8)'s helper.

mod cli;

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    if mount_mdfuse::invoked_as_helper(argv0.as_deref()) {
        std::process::exit(cli::helper::main(args.collect()));
    }
    std::process::exit(cli::main());
}
