//! md's write-mostly legs through real FUSE mounts: the flag given at
//! create, mount, `manage --add` and through `md/dev-*/state`, seen by the
//! real mdadm in the superblock (`Flags : write-mostly`), by mdstat (`(W)`)
//! and by `mdfuse detail`; and the reads of array.img, counted per leg in
//! `md/dev-*/block/stat`, never going to a write-mostly leg while another
//! in-sync leg remains, and going to it, with the right data, once none
//! does.
//!
//! Every mount and daemon is a guard: nothing is left behind, also when a
//! test fails. Root only.

mod common;

use common::io::read_direct;
use common::loopdev::needs_root;
use common::mdfuse::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// 64 MiB legs.
const LEG: u64 = 64 << 20;
/// What the tests write and read back.
const DATA: usize = 8 << 20;

/// Read requests leg `name` has served (field 1 of `md/dev-NAME/block/stat`).
fn reads_of(m: &MountedArray, name: &str) -> u64 {
    m.md(&format!("dev-{name}/block/stat"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("md/dev-*/block/stat")
}

/// Reads array.img with O_DIRECT in requests of several sizes (small ones
/// balanced between legs, large ones split over them, sequential streams
/// read ahead) and checks every byte against `want`.
fn read_all_ways(image: &Path, want: &[u8]) {
    for size in [4096usize, 64 << 10, 256 << 10, 1 << 20] {
        let mut off = 0;
        while off < want.len() {
            let len = size.min(want.len() - off);
            let got = read_direct(image, off as u64, len).expect("O_DIRECT read of array.img");
            assert!(
                got[..] == want[off..off + len],
                "array.img reads other data at {off} (+{len})"
            );
            off += len;
        }
    }
}

/// `mdadm --examine LEG`'s `Flags` line (None: no devflags set).
fn mdadm_flags(leg: &Path) -> Option<String> {
    examine_field(&mdadm_examine(leg), "Flags")
}

fn detail(m: &MountedArray) -> String {
    let o = mdfuse_with(&["detail"], &[m.mountpoint()]);
    assert_ok("mdfuse detail", &o);
    stdout(&o)
}

#[test]
fn a_leg_created_write_mostly_is_read_only_when_no_other_leg_can_serve() {
    let t = "a_leg_created_write_mostly_is_read_only_when_no_other_leg_can_serve";
    if !needs_root(t) {
        return;
    }
    let legs = Legs::temp(LEG);
    let created = create(&legs, &["--write-mostly", path_str(legs.path(1))]);
    assert!(
        created.stdout.contains("leg1.img is write-mostly"),
        "{}",
        created.stdout
    );
    // md's WriteMostly1 in the superblock, as mdadm reads it.
    assert_eq!(mdadm_flags(legs.path(1)).as_deref(), Some("write-mostly"));
    assert_eq!(mdadm_flags(legs.path(0)), None);
    let m = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    let mdstat = m.mdstat();
    assert!(
        mdstat.contains("raid1 leg1.img[1](W) leg0.img[0]\n"),
        "{mdstat}"
    );
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync,write_mostly");
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    let d = detail(&m);
    assert!(
        d.lines()
            .any(|l| l.contains("active sync writemostly") && l.ends_with("leg1.img")),
        "{d}"
    );
    assert!(
        examine_field(&d, "Active Devices").as_deref() == Some("2"),
        "{d}"
    );
    let data = m.fill_random(0, DATA, 11);
    let (r0, r1) = (reads_of(&m, "leg0.img"), reads_of(&m, "leg1.img"));
    read_all_ways(&m.image(), &data);
    let (d0, d1) = (reads_of(&m, "leg0.img") - r0, reads_of(&m, "leg1.img") - r1);
    eprintln!("reads with leg1 write-mostly: leg0 {d0}, leg1 {d1}");
    assert_eq!(d1, 0, "the write-mostly leg was read");
    assert!(d0 > 0, "leg0 served no read");
    // The other leg fails: the write-mostly leg serves, with the data.
    m.set_md("dev-leg0.img/state", "faulty");
    assert!(m.mdstat().contains("[2/1] [_U]"), "{}", m.mdstat());
    read_all_ways(&m.image(), &data);
    let d1 = reads_of(&m, "leg1.img") - r1;
    eprintln!("reads with leg0 failed: leg1 {d1}");
    assert!(d1 > 0, "the write-mostly leg served no read");
    // Back in: it is written again, and read again only when it must be.
    m.set_md("dev-leg0.img/state", "re-add");
    m.wait_sync_idle(Duration::from_secs(60));
    assert!(m.mdstat().contains("[2/2] [UU]"), "{}", m.mdstat());
    let r1 = reads_of(&m, "leg1.img");
    read_all_ways(&m.image(), &data);
    assert_eq!(reads_of(&m, "leg1.img"), r1, "read after leg0 came back");
    m.stop();
    assert_stopped_clean(&legs.paths, None);
    assert_eq!(mdadm_flags(legs.path(1)).as_deref(), Some("write-mostly"));
    legs.assert_identical(DATA as u64);
}

#[test]
fn writemostly_through_md_state_is_recorded_and_survives_a_remount() {
    let t = "writemostly_through_md_state_is_recorded_and_survives_a_remount";
    if !needs_root(t) {
        return;
    }
    let legs = Legs::temp(LEG);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert!(!m.mdstat().contains("(W)"), "{}", m.mdstat());
    let data = m.fill_random(0, DATA, 12);
    // Both legs serve reads.
    let r0 = reads_of(&m, "leg0.img");
    read_all_ways(&m.image(), &data);
    assert!(reads_of(&m, "leg0.img") > r0, "leg0 served no read");
    m.set_md("dev-leg0.img/state", "writemostly");
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync,write_mostly");
    assert!(m.mdstat().contains("leg0.img[0](W)"), "{}", m.mdstat());
    // md_update_sb: in its superblock at once.
    assert_eq!(mdadm_flags(legs.path(0)).as_deref(), Some("write-mostly"));
    let r0 = reads_of(&m, "leg0.img");
    read_all_ways(&m.image(), &data);
    assert_eq!(
        reads_of(&m, "leg0.img"),
        r0,
        "the write-mostly leg was read"
    );
    // md refuses anything but its words (cmd_match).
    for bad in ["write_mostly", " writemostly", "writemostly\n"] {
        let e = m
            .write_md("dev-leg0.img/state", bad)
            .expect_err("a word md does not take");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
    }
    m.stop();
    assert_stopped_clean(&legs.paths, None);
    // Assembled from its superblock: still write-mostly.
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync,write_mostly");
    let r0 = reads_of(&m, "leg0.img");
    read_all_ways(&m.image(), &data);
    assert_eq!(reads_of(&m, "leg0.img"), r0, "read after the remount");
    // -writemostly: read again, recorded, and so after a remount.
    m.set_md("dev-leg0.img/state", "-writemostly");
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    read_all_ways(&m.image(), &data);
    assert!(reads_of(&m, "leg0.img") > r0, "leg0 not read again");
    m.stop();
    assert_eq!(mdadm_flags(legs.path(0)), None);
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    assert!(!m.mdstat().contains("(W)"), "{}", m.mdstat());
    m.stop();
    // At mount: --write-mostly sets it (and records it), --readwrite clears it.
    let m = MountedArray::mount(&legs, &mnt, &["--write-mostly", path_str(legs.path(1))]);
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync,write_mostly");
    assert_eq!(mdadm_flags(legs.path(1)).as_deref(), Some("write-mostly"));
    m.stop();
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync,write_mostly");
    m.stop();
    let m = MountedArray::mount(&legs, &mnt, &["--readwrite", path_str(legs.path(1))]);
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync");
    m.stop();
    assert_eq!(mdadm_flags(legs.path(1)), None);
    assert_stopped_clean(&legs.paths, None);
    // A leg that is not one of the array's is refused by name.
    let Err(o) = MountedArray::try_mount(&legs, &mnt, &["--write-mostly", "/nonexistent/leg9.img"])
    else {
        panic!("mounted with --write-mostly naming a leg that is not the array's");
    };
    let err = text(&o);
    assert!(
        err.contains("leg9.img") && err.contains("--write-mostly"),
        "{err}"
    );
}

#[test]
fn a_leg_added_write_mostly_is_recovered_and_then_read_only_as_a_last_resort() {
    let t = "a_leg_added_write_mostly_is_recovered_and_then_read_only_as_a_last_resort";
    if !needs_root(t) {
        return;
    }
    let legs = Legs::temp(LEG);
    create(&legs, &[]);
    // leg1 is replaced by a blank leg, added write-mostly (mdadm's
    // `--add --write-mostly`).
    let fresh = legs.dir().join("fresh.img");
    common::loopdev::sparse_file(&fresh, LEG).expect("fresh leg");
    let one = Legs::from_paths(vec![legs.path(0).to_owned()]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&one, &mnt, &["--run"]);
    let data = m.fill_random(0, DATA, 13);
    let o = mdfuse(&[
        "manage",
        path_str(&mnt),
        "--add",
        path_str(&fresh),
        "--write-mostly",
    ]);
    assert_ok("mdfuse manage --add --write-mostly", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    assert!(
        m.mdstat().contains("fresh.img[1](W) leg0.img[0]"),
        "{}",
        m.mdstat()
    );
    assert_eq!(m.md("dev-fresh.img/state"), "in_sync,write_mostly");
    let r = reads_of(&m, "fresh.img");
    read_all_ways(&m.image(), &data);
    assert_eq!(
        reads_of(&m, "fresh.img"),
        r,
        "the write-mostly leg was read"
    );
    // Without --add or --re-add the flag has nothing to go with.
    let o = mdfuse(&["manage", path_str(&mnt), "--fail", path_str(&fresh), "-W"]);
    assert!(assert_fails("manage --fail -W", &o).contains("--add"));
    m.stop();
    assert_eq!(mdadm_flags(&fresh).as_deref(), Some("write-mostly"));
    assert_stopped_clean(&[legs.path(0).to_owned(), fresh.clone()], None);
    // --re-add --readwrite clears it (mdadm's manage mode).
    let both = Legs::from_paths(vec![legs.path(0).to_owned(), fresh.clone()]);
    let m = MountedArray::mount(&both, &mnt, &[]);
    m.fail_and_remove("fresh.img");
    let o = mdfuse(&[
        "manage",
        path_str(&mnt),
        "--re-add",
        path_str(&fresh),
        "--readwrite",
    ]);
    assert_ok("mdfuse manage --re-add --readwrite", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    assert_eq!(m.md("dev-fresh.img/state"), "in_sync");
    m.stop();
    assert_eq!(mdadm_flags(&fresh), None);
}

#[test]
fn the_mount_helper_takes_write_mostly_legs() {
    let t = "the_mount_helper_takes_write_mostly_legs";
    if !needs_root(t) {
        return;
    }
    let legs = Legs::temp(LEG);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let log = log_path(&mnt);
    // mount(8) runs the helper as `mount.mdfuse SOURCE DIR -o OPTIONS`.
    let out = Command::new(bin())
        .arg0("mount.mdfuse")
        .arg("mirror")
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "legs={}:{},write_mostly={},log={}",
            legs.path(0).display(),
            legs.path(1).display(),
            legs.path(0).display(),
            log.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run mount.mdfuse");
    if !out.status.success() {
        for pid in daemons_for(&mnt) {
            signal(pid, libc::SIGKILL);
        }
    }
    assert_ok("mount.mdfuse -o write_mostly=", &out);
    let m = MountedArray::adopt(&legs, &mnt, log);
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync,write_mostly");
    assert!(m.mdstat().contains("leg0.img[0](W)"), "{}", m.mdstat());
    m.stop();
    assert_eq!(mdadm_flags(legs.path(0)).as_deref(), Some("write-mostly"));
}
