//! `mdfuse gen-assets DIR` (hidden): the man pages and shell completions the
//! Debian package installs, generated from the clap definitions, so they say
//! what `--help` says: `DIR/man/mdfuse.8` and `DIR/man/mdfuse-SUBCOMMAND.8`,
//! `DIR/man/mount.mdfuse.8`, `DIR/completions/{mdfuse.bash,_mdfuse,mdfuse.fish}`.

use clap::CommandFactory;
use std::path::Path;

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn man_page(cmd: clap::Command) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(&mut out)
        .map_err(|e| format!("man page: {e}"))?;
    Ok(out)
}

/// The helper's page: mount(8)'s arguments and the options (the helper has
/// no clap definition; its options come from its table, `MOUNT_OPTIONS`).
fn mount_helper_man() -> String {
    let options = mount_mdfuse::options_synopsis()
        .join(", ")
        .replace('-', "\\-");
    format!(
        r#".TH mount.mdfuse 8 "" "mdfuse" "System Administration"
.SH NAME
mount.mdfuse \- mount an mdfuse RAID1 array (the mount(8) helper)
.SH SYNOPSIS
\fBmount \-t mdfuse \-o legs=\fILEG\fB:\fILEG\fR[\fB,\fIoptions\fR] \fISOURCE MOUNTPOINT\fR
.br
fstab: \fISOURCE MOUNTPOINT\fR \fBmdfuse legs=\fILEG\fB:\fILEG\fR[\fB,\fIoptions\fR] \fB0 0\fR
.SH DESCRIPTION
\fBmount.mdfuse\fR is \fBmdfuse\fR run by that name (a link to it). It
translates mount(8)'s arguments into \fBmdfuse mount\fR \fIoptions\fR \fB\-\-\fR
\fILEG...\fR \fIMOUNTPOINT\fR and returns once the array is live.
\fBumount\fR stops the array clean.
.SH OPTIONS
{options} (the legs may be given as SOURCE instead, LEG:LEG); each is the
\fBmdfuse mount\fR flag of the same name (see mdfuse\-mount(8)); mount's own
(defaults, noauto, nofail, x\-*, ...) are accepted; anything else is refused.
A leg path holding ':' or ',' cannot be given: use a symlink. A leg that
is an NBD URI (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH)
keeps its own ':'s: it runs up to the first ':' after its scheme:// that is
followed by '/' or by another nbd URI (the next leg, an absolute path or a
URI); inside a URI, write a ':' followed by '/' as %3A.
.SH SEE ALSO
mdfuse(8), mdfuse\-mount(8), mount(8), fstab(5)
"#
    )
}

pub fn cmd_gen_assets(dir: &Path) -> Result<(), String> {
    let cmd = super::Cli::command();
    let man = dir.join("man");
    write(&man.join("mdfuse.8"), &man_page(cmd.clone())?)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap wants a 'static name; this command runs once and exits.
        let name: &'static str = format!("mdfuse-{}", sub.get_name()).leak();
        let page = man_page(sub.clone().name(name))?;
        write(&man.join(format!("{name}.8")), &page)?;
    }
    write(&man.join("mount.mdfuse.8"), mount_helper_man().as_bytes())?;
    let completions = dir.join("completions");
    for (shell, file) in [
        (clap_complete::Shell::Bash, "mdfuse.bash"),
        (clap_complete::Shell::Zsh, "_mdfuse"),
        (clap_complete::Shell::Fish, "mdfuse.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "mdfuse", &mut out);
        write(&completions.join(file), &out)?;
    }
    Ok(())
}
