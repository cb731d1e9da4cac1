//! Legs on NBD servers, with real servers: qemu-nbd (over a Unix socket,
//! and over TCP inside a network namespace the test makes, on its own
//! loopback: no address of the host is used) and nbdkit (a server that
//! advertises no flush). The mirror's file leg and the server's image file
//! are compared afterwards, and mdadm reads the remote leg's superblock
//! from the image the server serves.
//!
//! Every server, namespace, mount and daemon is a guard: nothing is left
//! behind, also when a test fails. Root only; a missing tool skips a test
//! with a line saying so (a failure under MDFUSE_REQUIRE_ALL=1).

mod common;

use common::loopdev::{needs_root, skipped};
use common::mdfuse::*;
use common::nbd::Server;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// 64 MiB legs: room for the superblock area and some data.
const LEG: u64 = 64 << 20;
/// What the workloads write and compare (from the data start).
const DATA: u64 = 24 << 20;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// True when every tool is there; else the test is skipped, saying which.
fn tools(test: &str, need: &[&str]) -> bool {
    if !needs_root(test) {
        return false;
    }
    match need.iter().find(|t| !have(t)) {
        Some(t) => {
            skipped(test, &format!("{t} is not installed"));
            false
        }
        None => true,
    }
}

/// A network namespace of the test's, its loopback up. Dropped: deleted.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("mdfuse-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert_ok("ip netns add", &out);
        let ns = Netns { name };
        let out = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .output()
            .expect("run ip");
        assert_ok("ip link set lo up", &out);
        ns
    }

    /// Moves this thread (and so every process it starts) into the
    /// namespace until the guard drops; its mounts stay the host's, so
    /// a FUSE mount made from here is seen as any other.
    fn enter(&self) -> InNetns {
        let open = |p: &str| std::fs::File::open(p).unwrap_or_else(|e| panic!("open {p}: {e}"));
        use std::os::unix::io::AsRawFd;
        let home = open("/proc/thread-self/ns/net");
        let target = open(&format!("/run/netns/{}", self.name));
        // SAFETY: setns on a namespace descriptor, for this thread only.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        InNetns { home }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// This thread inside a namespace; dropped: back home.
struct InNetns {
    home: std::fs::File,
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: setns back to the namespace this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A file leg and an image file for a server, in a fresh directory.
fn file_and_image() -> (Legs, PathBuf) {
    let legs = Legs::temp(LEG);
    // Legs::temp made two files: the second becomes the server's image.
    let img = legs.path(1).to_owned();
    (legs, img)
}

/// The legs as mdfuse is given them: the file leg and the URI.
fn with_uri(file_legs: &Legs, uri: &str) -> Legs {
    // Share the temporary directory's lifetime with `file_legs`.
    let mut l = file_legs.clone();
    l.paths = vec![file_legs.path(0).to_owned(), PathBuf::from(uri)];
    l
}

/// Writes `DATA` bytes of a pseudo-random pattern through array.img with
/// O_DIRECT and fsyncs, reads it back and checks it.
fn workload(m: &MountedArray, seed: u64) {
    let written = m.fill_random(0, DATA as usize, seed);
    let o = Command::new("sync").arg(m.image()).output().expect("sync");
    assert_ok("sync array.img", &o);
    let back = std::fs::read(m.image()).expect("read array.img");
    assert!(
        back[..DATA as usize] == written[..],
        "array.img reads back other data"
    );
}

/// sha256 of each leg's data area: the file leg's and the image's.
fn assert_data_identical(file: &Path, img: &Path) {
    let off = data_offset(file);
    assert_eq!(off, data_offset(img), "data offsets differ");
    let a = sha256_region(file, off, DATA);
    let b = sha256_region(img, off, DATA);
    assert_eq!(a, b, "the file leg and the NBD leg's image differ");
}

#[test]
fn a_file_leg_and_an_nbd_leg_over_tcp_mirror_a_workload() {
    let t = "a_file_leg_and_an_nbd_leg_over_tcp_mirror_a_workload";
    if !tools(t, &["qemu-nbd", "ip", "mdadm"]) {
        return;
    }
    let ns = Netns::new("tcp");
    let _inside = ns.enter();
    let (files, img) = file_and_image();
    let _server = Server::qemu_nbd(&img, "leg1", &["-b", "127.0.0.1", "-p", "10809"]);
    let uri = "nbd://127.0.0.1:10809/leg1";
    let legs = with_uri(&files, uri);
    let created = create(&legs, &["--name", "tcpmirror"]);
    // mdadm reads the remote leg's superblock from the served image.
    let e = mdadm_examine(&img);
    assert!(
        examine_field(&e, "Array UUID").is_some_and(|u| u == created.uuid),
        "{e}"
    );
    // So does mdfuse examine, through the server.
    let o = mdfuse(&["examine", uri]);
    assert_ok("mdfuse examine URI", &o);
    assert!(stdout(&o).contains(&created.uuid), "{}", stdout(&o));
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let mdstat = m.mdstat();
    assert!(mdstat.contains("nbd-127.0.0.1-10809-leg1[1]"), "{mdstat}");
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    assert!(!mdstat.contains("(V)"), "{mdstat}");
    // Remote, beside a local leg: write-mostly by default.
    assert!(
        mdstat.contains("nbd-127.0.0.1-10809-leg1[1](W)"),
        "{mdstat}"
    );
    assert_eq!(
        m.md("dev-nbd-127.0.0.1-10809-leg1/state"),
        "in_sync,write_mostly"
    );
    workload(&m, 15);
    m.stop();
    assert_stopped_clean(&[files.path(0).to_owned(), img.clone()], None);
    assert_data_identical(files.path(0), &img);
}

#[test]
fn an_array_mounts_from_its_nbd_leg_over_a_unix_socket() {
    let t = "an_array_mounts_from_its_nbd_leg_over_a_unix_socket";
    if !tools(t, &["qemu-nbd", "mdadm"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("leg1.sock");
    let _server = Server::qemu_nbd(&img, "leg1", &["-k", &sock.display().to_string()]);
    let uri = format!("nbd+unix:///leg1?socket={}", sock.display());
    // The URI first: the mount's source is the URI (mdfuse stop cannot
    // probe a lock on it).
    let legs = Legs::from_paths(vec![PathBuf::from(&uri), files.path(0).to_owned()]);
    create(&legs, &["--name", "unixmirror"]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    workload(&m, 7);
    m.stop();
    assert_data_identical(files.path(0), &img);
    // The NBD leg alone, degraded: its data reads back through the server.
    let alone = Legs::from_paths(vec![PathBuf::from(&uri)]);
    let mnt2 = files.mountpoint("mnt2");
    let m = MountedArray::mount(&alone, &mnt2, &["--run", "--ro"]);
    assert!(m.mdstat().contains("[2/1]"), "{}", m.mdstat());
    let back = std::fs::read(m.image()).expect("read array.img");
    let want = common::rng::Rng(7).bytes(DATA as usize);
    assert!(
        back[..DATA as usize] == want[..],
        "the NBD leg alone reads other data"
    );
    m.stop();
}

#[test]
fn a_server_without_flush_makes_its_leg_volatile() {
    let t = "a_server_without_flush_makes_its_leg_volatile";
    if !tools(t, &["nbdkit"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("volatile.sock");
    let _server = Server::nbdkit_without_flush(&img, &sock);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let legs = with_uri(&files, &uri);
    let o = try_create(&legs, &["--name", "vol"]);
    assert_ok("mdfuse create", &o);
    assert!(text(&o).contains("volatile"), "{}", text(&o));
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let name = "nbd-unix-volatile.sock";
    let mdstat = m.mdstat();
    assert!(mdstat.contains(&format!("{name}[1](W)(V)")), "{mdstat}");
    assert!(!mdstat.contains("leg0.img[0](V)"), "{mdstat}");
    assert_eq!(
        m.md(&format!("dev-{name}/state")),
        "in_sync,write_mostly,volatile"
    );
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    assert!(
        m.log().contains("advertises no flush") && m.log().contains("volatile"),
        "{}",
        m.log()
    );
    // mdfuse detail counts it as an active leg and says it is volatile.
    let o = mdfuse_with(&["detail"], &[m.mountpoint()]);
    assert_ok("mdfuse detail", &o);
    let detail = stdout(&o);
    assert!(
        detail
            .lines()
            .any(|l| l.contains("active sync writemostly volatile") && l.ends_with(name)),
        "{detail}"
    );
    assert!(
        examine_field(&detail, "Active Devices").as_deref() == Some("2"),
        "{detail}"
    );
    // It still mirrors.
    m.fill_random(0, 1 << 20, 3);
    m.stop();
    let off = data_offset(files.path(0));
    assert_eq!(
        sha256_region(files.path(0), off, 1 << 20),
        sha256_region(&img, off, 1 << 20)
    );
}

#[test]
fn tls_uris_are_refused_with_the_reason() {
    let t = "tls_uris_are_refused_with_the_reason";
    if !needs_root(t) {
        return;
    }
    let files = Legs::temp(LEG);
    for uri in [
        "nbds://127.0.0.1/leg1",
        "nbds+unix:///leg1?socket=/run/x.sock",
    ] {
        let legs = with_uri(&files, uri);
        let err = assert_fails("create with nbds://", &try_create(&legs, &[]));
        assert!(err.contains("TLS") && err.contains("not support"), "{err}");
        let err = assert_fails("examine nbds://", &mdfuse(&["examine", uri]));
        assert!(err.contains("TLS"), "{err}");
    }
    // A malformed URI is refused by name, not taken for a path.
    let legs = with_uri(&files, "nbd+unix:///leg1");
    let err = assert_fails("create without socket=", &try_create(&legs, &[]));
    assert!(err.contains("socket"), "{err}");
    // Two spellings of one export are one leg.
    let legs = Legs::from_paths(vec![
        PathBuf::from("nbd://h.example/x"),
        PathBuf::from("nbd://H.example:10809/x"),
    ]);
    let err = assert_fails("the same export twice", &try_create(&legs, &[]));
    assert!(err.contains("nbd://H.example:10809/x"), "{err}");
}

#[test]
fn mount_helper_takes_an_nbd_leg_in_legs() {
    let t = "mount_helper_takes_an_nbd_leg_in_legs";
    if !tools(t, &["qemu-nbd", "ip"]) {
        return;
    }
    let ns = Netns::new("helper");
    let _inside = ns.enter();
    let (files, img) = file_and_image();
    let _server = Server::qemu_nbd(&img, "leg1", &["-b", "127.0.0.1", "-p", "10810"]);
    let uri = "nbd://127.0.0.1:10810/leg1";
    let legs = with_uri(&files, uri);
    create(&legs, &["--name", "helper"]);
    let mnt = files.mountpoint("mnt");
    let log = log_path(&mnt);
    // mount(8) runs the helper as `mount.mdfuse SOURCE DIR -o OPTIONS`.
    let out = Command::new(bin())
        .arg0("mount.mdfuse")
        .arg("mirror")
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "legs={}:{uri},log={}{}",
            files.path(0).display(),
            log.display(),
            transport_option("")
                .map(|t| format!(",{t}"))
                .unwrap_or_default()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run mount.mdfuse");
    if !out.status.success() {
        for pid in daemons_for(&mnt) {
            signal(pid, libc::SIGKILL);
        }
    }
    assert_ok("mount.mdfuse", &out);
    let m = MountedArray::adopt(&legs, &mnt, log);
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    assert!(mdstat.contains("nbd-127.0.0.1-10810-leg1[1]"), "{mdstat}");
    workload(&m, 21);
    m.stop();
    assert_data_identical(files.path(0), &img);
}

#[test]
fn an_nbd_leg_is_added_to_a_degraded_array() {
    let t = "an_nbd_leg_is_added_to_a_degraded_array";
    if !tools(t, &["qemu-nbd", "mdadm"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("add.sock");
    let uri = format!("nbd+unix:///add?socket={}", sock.display());
    // An array of two file legs, the second then replaced by an NBD leg
    // (the image starts as a copy of nothing: a new leg, recovered).
    let spare = files.dir().join("spare.img");
    common::loopdev::sparse_file(&spare, LEG).expect("spare");
    let two = Legs::from_paths(vec![files.path(0).to_owned(), spare.clone()]);
    create(&two, &["--name", "addnbd"]);
    let one = Legs::from_paths(vec![files.path(0).to_owned()]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&one, &mnt, &["--run"]);
    m.fill_random(0, DATA as usize, 5);
    let mut server = Server::qemu_nbd(&img, "add", &["-k", &sock.display().to_string()]);
    let o = mdfuse(&["manage", "--add", &uri, &mnt.display().to_string()]);
    assert_ok("mdfuse manage --add URI", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    // A new remote leg beside a local one: write-mostly by default.
    assert!(mdstat.contains("nbd-unix-add.sock-add[1](W)"), "{mdstat}");
    m.stop();
    assert_data_identical(files.path(0), &img);
    server.kill();
}

/// Read requests leg `name` has served (`md/dev-NAME/block/stat`).
fn reads_of(m: &MountedArray, name: &str) -> u64 {
    m.md(&format!("dev-{name}/block/stat"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("md/dev-*/block/stat")
}

/// Reads the first `DATA` bytes of array.img with O_DIRECT, 256 KiB at a
/// time (requests large enough to be split over legs that may be).
fn read_back(m: &MountedArray, want: &[u8]) {
    let mut off = 0;
    while off < DATA as usize {
        let len = (256usize << 10).min(DATA as usize - off);
        let got = common::io::read_direct(&m.image(), off as u64, len).expect("O_DIRECT read");
        assert!(
            got[..] == want[off..off + len],
            "array.img reads other data at {off}"
        );
        off += len;
    }
}

#[test]
fn an_nbd_leg_is_write_mostly_by_default_and_readwrite_undoes_it() {
    let t = "an_nbd_leg_is_write_mostly_by_default_and_readwrite_undoes_it";
    if !tools(t, &["qemu-nbd", "mdadm"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("wm.sock");
    let _server = Server::qemu_nbd(&img, "wm", &["-k", &sock.display().to_string()]);
    let uri = format!("nbd+unix:///wm?socket={}", sock.display());
    let name = "nbd-unix-wm.sock-wm";
    let legs = with_uri(&files, &uri);
    let created = create(&legs, &["--name", "wm"]);
    assert!(
        created.stdout.contains(&format!("{uri} is write-mostly")),
        "{}",
        created.stdout
    );
    // In the remote leg's own superblock, as mdadm reads it from the image.
    assert_eq!(
        examine_field(&mdadm_examine(&img), "Flags").as_deref(),
        Some("write-mostly")
    );
    assert_eq!(examine_field(&mdadm_examine(files.path(0)), "Flags"), None);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert!(
        m.mdstat().contains(&format!("{name}[1](W) leg0.img[0]")),
        "{}",
        m.mdstat()
    );
    assert_eq!(m.md(&format!("dev-{name}/state")), "in_sync,write_mostly");
    let data = m.fill_random(0, DATA as usize, 31);
    let (local, remote) = (reads_of(&m, "leg0.img"), reads_of(&m, name));
    read_back(&m, &data);
    assert_eq!(reads_of(&m, name), remote, "the remote leg was read");
    assert!(reads_of(&m, "leg0.img") > local);
    m.stop();
    assert_data_identical(files.path(0), &img);
    // --readwrite URI: read as any leg (large reads split over both).
    let created = create(&legs, &["--name", "rw", "--force", "--readwrite", &uri]);
    assert!(
        !created.stdout.contains("write-mostly"),
        "{}",
        created.stdout
    );
    assert_eq!(examine_field(&mdadm_examine(&img), "Flags"), None);
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert!(!m.mdstat().contains("(W)"), "{}", m.mdstat());
    assert_eq!(m.md(&format!("dev-{name}/state")), "in_sync");
    let data = m.fill_random(0, DATA as usize, 32);
    let remote = reads_of(&m, name);
    read_back(&m, &data);
    assert!(reads_of(&m, name) > remote, "the remote leg was not read");
    m.stop();
}

/// Writes `n` blocks of 64 KiB of a pattern from `seed` at `offset` of
/// array.img, one O_DIRECT write each, `pause` apart; every write must
/// succeed (a leg lost meanwhile is no user error). Returns the data.
fn paced_writes(image: &Path, offset: u64, n: usize, seed: u64, pause: Duration) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let data = common::rng::Rng(seed).bytes(n * 65536);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)
        .expect("open array.img");
    let mut buf = common::io::AlignedVec::zeroed(65536);
    for i in 0..n {
        buf.as_mut_slice()
            .copy_from_slice(&data[i * 65536..(i + 1) * 65536]);
        f.write_all_at(buf.as_slice(), offset + (i * 65536) as u64)
            .unwrap_or_else(|e| panic!("write {i} of array.img failed: {e}"));
        std::thread::sleep(pause);
    }
    f.sync_all().expect("fsync array.img");
    data
}

/// `md/dev-NAME/state` of `m`, None while the leg is out of its slot (a
/// re-add removes it, then adds it back).
fn dev_state(m: &MountedArray, name: &str) -> Option<String> {
    std::fs::read_to_string(m.mountpoint().join(format!("md/dev-{name}/state")))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The state word of `md/dev-NAME/state` (its flags, such as
/// `write_mostly`, left off), None while the leg is out of its slot.
fn dev_word(m: &MountedArray, name: &str) -> Option<String> {
    dev_state(m, name).map(|s| s.split(',').next().unwrap_or_default().to_string())
}

/// Starts qemu-nbd again on `sock` (a killed one leaves its socket file).
fn restart_on(img: &Path, export: &str, sock: &Path) -> Server {
    let _ = std::fs::remove_file(sock);
    Server::qemu_nbd(img, export, &["-k", &sock.display().to_string()])
}

#[test]
fn a_remote_leg_lost_during_writes_comes_back_by_itself_copying_only_dirty_chunks() {
    let t = "a_remote_leg_lost_during_writes_comes_back_by_itself_copying_only_dirty_chunks";
    if !tools(t, &["qemu-nbd", "mdadm"]) {
        return;
    }
    let fs = match common::loopdev::ScratchFs::ext4(4096) {
        Ok(fs) => fs,
        Err(e) => return skipped(t, &format!("no scratch filesystem for the bitmap: {e}")),
    };
    let bitmap = fs.path("nbd.bitmap");
    let bm = bitmap.display().to_string();
    let (files, img) = file_and_image();
    let sock = files.dir().join("leg1.sock");
    let mut server = Server::qemu_nbd(&img, "leg1", &["-k", &sock.display().to_string()]);
    let uri = format!("nbd+unix:///leg1?socket={}", sock.display());
    let legs = with_uri(&files, &uri);
    create(
        &legs,
        &["--bitmap", &bm, "--bitmap-chunk", "1M", "--delay", "1"],
    );
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bm]);
    let first = m.fill_random(0, 8 << 20, 1);
    // The bits of those writes go once idle (delay 1 s).
    wait_for("a clean bitmap", Duration::from_secs(30), || {
        common::bitmap::dirty_on_disk(&bitmap).is_empty()
    });
    // 4 MiB at 20 MiB, in 64 paced writes; the server dies meanwhile.
    let image = m.image();
    let writer = std::thread::spawn(move || {
        paced_writes(&image, 20 << 20, 64, 2, Duration::from_millis(20))
    });
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let second = writer.join().expect("the writes went on without an error");
    wait_for("the NBD leg faulty", Duration::from_secs(10), || {
        m.md("dev-nbd-unix-leg1.sock-leg1/state") == "faulty,write_mostly"
    });
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    // The server comes back on the same image: the leg comes back alone.
    let _server = restart_on(&img, "leg1", &sock);
    wait_for("the NBD leg back in sync", Duration::from_secs(60), || {
        dev_state(&m, "nbd-unix-leg1.sock-leg1").as_deref() == Some("in_sync,write_mostly")
    });
    m.wait_sync_idle(Duration::from_secs(60));
    let copied: u64 = m
        .md("sync_copied")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("md/sync_copied");
    eprintln!("re-added after a server restart: recovery copied {copied} bytes");
    assert_eq!(
        copied,
        4 << 20,
        "only the 4 chunks written while the leg was away are copied"
    );
    let log = m.log();
    assert!(log.contains("reconnecting in the background"), "{log}");
    assert!(log.contains("the server is back after"), "{log}");
    assert!(m.mdstat().contains("[2/2] [UU]"), "{}", m.mdstat());
    let back = std::fs::read(m.image()).expect("read array.img");
    assert!(
        back[..8 << 20] == first[..],
        "the first writes read back wrong"
    );
    assert!(
        back[20 << 20..24 << 20] == second[..],
        "the degraded writes read back wrong"
    );
    m.stop();
    assert_data_identical(files.path(0), &img);
}

#[test]
fn a_remote_leg_on_another_image_is_not_re_added_and_the_log_says_why() {
    let t = "a_remote_leg_on_another_image_is_not_re_added_and_the_log_says_why";
    if !tools(t, &["qemu-nbd"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("leg1.sock");
    let mut server = Server::qemu_nbd(&img, "leg1", &["-k", &sock.display().to_string()]);
    let uri = format!("nbd+unix:///leg1?socket={}", sock.display());
    let legs = with_uri(&files, &uri);
    create(&legs, &[]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    server.kill();
    m.fill_random(0, 1 << 20, 9);
    assert_eq!(
        m.md("dev-nbd-unix-leg1.sock-leg1/state"),
        "faulty,write_mostly"
    );
    // Back, but serving a blank image under the same name.
    let other = files.dir().join("other.img");
    common::loopdev::sparse_file(&other, LEG).expect("other image");
    let _server = restart_on(&other, "leg1", &sock);
    wait_for("the refusal in the log", Duration::from_secs(60), || {
        m.log().contains("the leg is not re-added")
    });
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("the leg is not re-added"))
        .expect("the line");
    assert!(
        line.contains(&uri) && line.contains("no md superblock"),
        "{line}"
    );
    assert_eq!(
        m.md("dev-nbd-unix-leg1.sock-leg1/state"),
        "faulty,write_mostly"
    );
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    m.stop();
}

#[test]
fn a_cut_link_times_the_remote_leg_out_and_it_comes_back_with_the_link() {
    let t = "a_cut_link_times_the_remote_leg_out_and_it_comes_back_with_the_link";
    if !tools(t, &["qemu-nbd", "ip"]) {
        return;
    }
    let ns = Netns::new("link");
    let _inside = ns.enter();
    let (files, img) = file_and_image();
    // Two clients: the dead connection may linger on the server's side
    // while the reconnect comes.
    let _server = Server::qemu_nbd(&img, "leg1", &["-e", "2", "-b", "127.0.0.1", "-p", "10811"]);
    let uri = "nbd://127.0.0.1:10811/leg1?x-timeout=2";
    let legs = with_uri(&files, uri);
    create(&legs, &[]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let first = m.fill_random(0, 1 << 20, 1);
    let link = |state: &str| {
        let o = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", state])
            .output()
            .expect("run ip");
        assert_ok(&format!("ip link set lo {state}"), &o);
    };
    link("down");
    // No reply comes: the write waits for the request timeout (2 s), the
    // leg is failed, and the write succeeds on the file leg.
    let started = std::time::Instant::now();
    let second = m.fill_random(4 << 20, 1 << 20, 2);
    let took = started.elapsed();
    let dev = "nbd-127.0.0.1-10811-leg1";
    assert_eq!(dev_state(&m, dev).as_deref(), Some("faulty,write_mostly"));
    assert!(took < Duration::from_secs(20), "the write took {took:?}");
    assert!(m.log().contains("no reply within 2 s"), "{}", m.log());
    link("up");
    wait_for("the NBD leg back in sync", Duration::from_secs(90), || {
        dev_state(&m, dev).as_deref() == Some("in_sync,write_mostly")
    });
    m.wait_sync_idle(Duration::from_secs(60));
    let back = std::fs::read(m.image()).expect("read array.img");
    assert!(back[..1 << 20] == first[..] && back[4 << 20..5 << 20] == second[..]);
    m.stop();
    assert_data_identical(files.path(0), &img);
}

/// `md/dev-NAME/remote/FILE` of `m`.
fn remote(m: &MountedArray, dev: &str, file: &str) -> String {
    m.md(&format!("dev-{dev}/remote/{file}"))
}

/// `mdfuse detail MOUNTPOINT`'s text.
fn detail(m: &MountedArray) -> String {
    let o = mdfuse_with(&["detail"], &[m.mountpoint()]);
    assert_ok("mdfuse detail", &o);
    stdout(&o)
}

#[test]
fn a_hung_server_is_found_by_the_keepalive_on_an_idle_array_and_the_operator_sees_the_link() {
    let t =
        "a_hung_server_is_found_by_the_keepalive_on_an_idle_array_and_the_operator_sees_the_link";
    if !tools(t, &["qemu-nbd"]) {
        return;
    }
    let (files, img) = file_and_image();
    let sock = files.dir().join("leg1.sock");
    let server = Server::qemu_nbd(
        &img,
        "leg1",
        &["-e", "4", "-k", &sock.display().to_string()],
    );
    let uri = format!(
        "nbd+unix:///leg1?socket={}&x-timeout=2&x-keepalive=1",
        sock.display()
    );
    let legs = with_uri(&files, &uri);
    create(&legs, &[]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let dev = "nbd-unix-leg1.sock-leg1";
    let first = m.fill_random(0, 1 << 20, 1);
    let o = Command::new("sync").arg(m.image()).output().expect("sync");
    assert_ok("sync array.img", &o);

    // Connected: the URI, a flush just now, a round trip from the
    // keepalive's probes once the array is idle.
    assert_eq!(remote(&m, dev, "link"), "connected");
    assert!(remote(&m, dev, "uri").starts_with("nbd+unix:///leg1?socket="));
    let flushed: u64 = remote(&m, dev, "last_flush_ms")
        .parse()
        .expect("a flush on record after sync");
    assert!(flushed < 60_000, "last flush {flushed} ms ago");
    wait_for("a round trip measured", Duration::from_secs(10), || {
        remote(&m, dev, "rtt_us") != "none"
    });
    assert_eq!(remote(&m, dev, "reconnect_attempts"), "0");
    let text = detail(&m);
    assert!(text.contains("Remote Legs"), "{text}");
    assert!(
        text.contains(&format!("{dev} : nbd+unix:///leg1")),
        "{text}"
    );
    assert!(text.contains("connected, round trip"), "{text}");
    let o = mdfuse_with(&["detail", "--json"], &[m.mountpoint()]);
    assert_ok("mdfuse detail --json", &o);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("detail's JSON");
    let remote_json = json["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find_map(|d| d["remote"].as_object().cloned())
        .expect("the NBD leg's remote object");
    assert_eq!(remote_json["link"], "connected");
    assert!(remote_json["rtt_us"].as_u64().is_some(), "{remote_json:?}");
    // A local leg has no remote/ files.
    assert!(!m
        .mountpoint()
        .join(format!("md/dev-{}/remote", files.name(0)))
        .exists());

    // The server hangs (stopped, its socket still open): no I/O comes from
    // the user, yet the keepalive's probe goes unanswered within the
    // request timeout and the leg is failed.
    // Idle: the array marked clean (md's safe mode), no write of the
    // daemon's own pending.
    wait_for("the array clean", Duration::from_secs(10), || {
        m.md("array_state") == "clean"
    });
    signal(server.pid, libc::SIGSTOP);
    let hung = std::time::Instant::now();
    wait_for(
        "the hung leg failed with no I/O",
        Duration::from_secs(20),
        || dev_word(&m, dev).as_deref() == Some("faulty"),
    );
    eprintln!(
        "a hung server's leg failed {:?} after the hang",
        hung.elapsed()
    );
    assert!(m.log().contains("keepalive probe failed"), "{}", m.log());
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    // Tries to reconnect time out on the stopped server: counted, with why.
    wait_for("a failed reconnect try", Duration::from_secs(30), || {
        remote(&m, dev, "link") == "reconnecting" && remote(&m, dev, "reconnect_attempts") != "0"
    });
    assert!(!remote(&m, dev, "reason").is_empty());
    let text = detail(&m);
    assert!(text.contains("reconnecting, "), "{text}");
    // Reads go on from the file leg.
    let back = std::fs::read(m.image()).expect("read array.img");
    assert!(
        back[..1 << 20] == first[..],
        "array.img reads back other data"
    );

    // The server goes on: the leg comes back by itself.
    signal(server.pid, libc::SIGCONT);
    wait_for("the NBD leg back in sync", Duration::from_secs(90), || {
        dev_word(&m, dev).as_deref() == Some("in_sync")
    });
    m.wait_sync_idle(Duration::from_secs(60));
    assert_eq!(remote(&m, dev, "link"), "connected");
    assert_eq!(remote(&m, dev, "reconnect_attempts"), "0");
    m.stop();
    assert_data_identical(files.path(0), &img);
    drop(server);
}

/// A TCP relay from `listen` to `to` that holds every chunk `delay`
/// before passing it on, in each direction (a long link, as netem's delay
/// would make one: this kernel has no netem). Dropped: it takes no more
/// connections (those it carries end when their ends close).
struct DelayRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    fn start(to: std::net::SocketAddr, delay: Duration) -> DelayRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("relay address").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = std::net::TcpStream::connect(to) else {
                            continue;
                        };
                        for (from, into) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            let (Ok(from), Ok(into)) = (from, into) else {
                                continue;
                            };
                            conns.push(pipe_delayed(from, into, delay));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        DelayRelay {
            stop,
            port,
            thread: Some(thread),
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `into`, each chunk sent `delay` after it arrived.
fn pipe_delayed(
    mut from: std::net::TcpStream,
    into: std::net::TcpStream,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let mut out = into.try_clone().expect("clone");
    std::thread::spawn(move || {
        for (at, chunk) in rx {
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if out.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = out.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = into.shutdown(std::net::Shutdown::Write);
    })
}

#[test]
fn a_remote_leg_over_a_long_narrow_link_mirrors_a_workload_and_shows_its_round_trip() {
    let t = "a_remote_leg_over_a_long_narrow_link_mirrors_a_workload_and_shows_its_round_trip";
    if !tools(t, &["qemu-nbd", "ip", "tc"]) {
        return;
    }
    let ns = Netns::new("slow");
    let _inside = ns.enter();
    // 100 Mbit/s on the namespace's loopback (tbf), and 15 ms each way
    // through a relay: a round trip of about 30 ms.
    let o = Command::new("tc")
        .args(["-n", &ns.name, "qdisc", "add", "dev", "lo", "root", "tbf"])
        .args(["rate", "100mbit", "burst", "256kb", "latency", "400ms"])
        .output()
        .expect("run tc");
    assert_ok("tc qdisc add tbf", &o);
    let (files, img) = file_and_image();
    let _server = Server::qemu_nbd(&img, "leg1", &["-b", "127.0.0.1", "-p", "10813"]);
    let relay = DelayRelay::start(
        "127.0.0.1:10813".parse().expect("addr"),
        Duration::from_millis(15),
    );
    let uri = format!("nbd://127.0.0.1:{}/leg1?x-keepalive=1", relay.port);
    let legs = with_uri(&files, &uri);
    create(&legs, &[]);
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let started = std::time::Instant::now();
    workload(&m, 11);
    eprintln!("24 MiB over the long link in {:?}", started.elapsed());
    let dev = format!("nbd-127.0.0.1-{}-leg1", relay.port);
    assert_eq!(dev_word(&m, &dev).as_deref(), Some("in_sync"));
    // Idle now: the probes' round trips settle the average near 30 ms.
    std::thread::sleep(Duration::from_secs(4));
    let rtt: u64 = remote(&m, &dev, "rtt_us").parse().expect("a round trip");
    eprintln!("round trip shown: {rtt} us");
    assert!((25_000..1_000_000).contains(&rtt), "round trip {rtt} us");
    m.stop();
    assert_data_identical(files.path(0), &img);
    drop(relay);
}

#[test]
fn a_bit_is_cleared_only_once_the_remote_leg_has_flushed() {
    let t = "a_bit_is_cleared_only_once_the_remote_leg_has_flushed";
    if !tools(t, &["nbdkit"]) {
        return;
    }
    let fs = match common::loopdev::ScratchFs::ext4(4096) {
        Ok(fs) => fs,
        Err(e) => return skipped(t, &format!("no scratch filesystem for the bitmap: {e}")),
    };
    let bitmap = fs.path("slow.bitmap");
    let bm = bitmap.display().to_string();
    let (files, img) = file_and_image();
    let sock = files.dir().join("slow.sock");
    // The server's flush takes 6 s: a write reply is no persistence, and
    // the chunk's bit must wait for the flush that makes it one.
    const FLUSH: Duration = Duration::from_secs(6);
    let _server = Server::nbdkit_slow_flush(&img, &sock, FLUSH.as_secs());
    let uri = format!("nbd+unix:///leg1?socket={}", sock.display());
    let legs = with_uri(&files, &uri);
    create(
        &legs,
        &["--bitmap", &bm, "--bitmap-chunk", "1M", "--delay", "1"],
    );
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bm]);
    // One O_DIRECT write, no fsync: acknowledged once both legs replied.
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.image())
        .expect("open array.img");
    let mut buf = common::io::AlignedVec::zeroed(1 << 20);
    buf.as_mut_slice()
        .copy_from_slice(&common::rng::Rng(5).bytes(1 << 20));
    f.write_all_at(buf.as_slice(), 3 << 20)
        .expect("write array.img");
    let written = std::time::Instant::now();
    assert_eq!(
        common::bitmap::dirty_on_disk(&bitmap),
        vec![3],
        "the chunk's bit is on disk once the write is acknowledged"
    );
    // The bitmap daemon wakes every second; the bit may go only after the
    // remote leg's flush, which takes FLUSH.
    let mut cleared = None;
    while written.elapsed() < Duration::from_secs(40) {
        if common::bitmap::dirty_on_disk(&bitmap).is_empty() {
            cleared = Some(written.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cleared = cleared.expect("the bit is cleared once the flush is done");
    eprintln!("the bit cleared {cleared:?} after the write (flush takes {FLUSH:?})");
    assert!(
        cleared >= FLUSH,
        "the bit was cleared {cleared:?} after the write, before the remote flush could end"
    );
    drop(f);
    m.stop();
}

#[test]
fn a_power_cut_of_the_remote_side_loses_no_acknowledged_write() {
    let t = "a_power_cut_of_the_remote_side_loses_no_acknowledged_write";
    if !tools(t, &["qemu-nbd"]) {
        return;
    }
    let fs_bm = match common::loopdev::ScratchFs::ext4(4096) {
        Ok(fs) => fs,
        Err(e) => return skipped(t, &format!("no scratch filesystem for the bitmap: {e}")),
    };
    let bitmap = fs_bm.path("remote.bitmap");
    let bm = bitmap.display().to_string();
    // The remote image on a disk with a volatile write cache; qemu-nbd
    // over it with its own cache on (writeback): a write reply is in
    // caches only, a flush makes it durable.
    let disk = common::faultyfs::FaultyFs::volatile(&[("remote.img", LEG)]);
    let img = disk.path("remote.img");
    let files = Legs::temp(LEG);
    let sock = files.dir().join("remote.sock");
    let listen = ["-k".to_string(), sock.display().to_string()];
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    let mut server = Server::qemu_nbd_cache(&img, "leg1", "writeback", &listen);
    let uri = format!(
        "nbd+unix:///leg1?socket={}&x-timeout=2&x-keepalive=1",
        sock.display()
    );
    let legs = with_uri(&files, &uri);
    create(
        &legs,
        &["--bitmap", &bm, "--bitmap-chunk", "1M", "--delay", "1"],
    );
    let mnt = files.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bm]);
    let dev = "nbd-unix-remote.sock-leg1";
    // Durable writes (fsync returned), then acknowledged writes paced over
    // 3 s: the bitmap daemon clears the bits of the early ones meanwhile,
    // each time after a flush of both legs; the late ones are in no
    // flush when the power goes.
    let durable = m.fill_random(0, 8 << 20, 1);
    let o = Command::new("sync").arg(m.image()).output().expect("sync");
    assert_ok("sync array.img", &o);
    let image = m.image();
    let (acked, open_image) = {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let data = common::rng::Rng(2).bytes(48 * 65536);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&image)
            .expect("open array.img");
        let mut buf = common::io::AlignedVec::zeroed(65536);
        for i in 0..48 {
            std::thread::sleep(Duration::from_millis(60));
            buf.as_mut_slice()
                .copy_from_slice(&data[i * 65536..(i + 1) * 65536]);
            // Spread over 12 chunks, 4 writes each.
            let at = (10 << 20) + (i as u64 % 12) * (1 << 20) + (i as u64 / 12) * 65536;
            f.write_all_at(buf.as_slice(), at)
                .unwrap_or_else(|e| panic!("write {i} of array.img: {e}"));
        }
        // Kept open: its close would flush the legs (as fsync).
        (data, f)
    };
    // The remote side loses its power: its disk stops at once, the server
    // dies, and the writes no flush covered are kept, torn or dropped.
    eprintln!(
        "the remote disk before the cut: {:?}, {} writes unflushed",
        disk.counters("remote.img"),
        disk.unflushed_writes("remote.img")
    );
    disk.cut();
    server.kill();
    let mut rng = common::rng::Rng(0x5eed);
    let outcome = disk.restore_power(common::faultyfs::Survival::Random(&mut rng));
    eprintln!("remote power cut: {outcome:?}");
    assert!(
        outcome.unflushed > 0,
        "the cut found no write in the remote disk's cache: it tests nothing"
    );
    drop(open_image);
    wait_for("the NBD leg faulty", Duration::from_secs(30), || {
        dev_word(&m, dev).as_deref() == Some("faulty")
    });
    // The server comes back on what its disk kept; the leg is re-added
    // with the chunks its bitmap holds dirty.
    let _server = restart_on_cache(&img, "leg1", "writeback", &sock);
    wait_for("the NBD leg back in sync", Duration::from_secs(90), || {
        dev_word(&m, dev).as_deref() == Some("in_sync")
    });
    m.wait_sync_idle(Duration::from_secs(60));
    let copied = m.md("sync_copied");
    eprintln!("recovery after the remote power cut copied {copied}");
    m.stop();
    // Both legs hold every write: the durable ones and the acknowledged
    // ones the remote side had lost.
    let off = data_offset(files.path(0));
    let local = data_region(files.path(0), off, 22 << 20);
    assert!(
        local[..8 << 20] == durable[..],
        "the local leg lost a durable write"
    );
    for i in 0..48usize {
        let at = (10 << 20) + (i % 12) * (1 << 20) + (i / 12) * 65536;
        assert!(
            local[at..at + 65536] == acked[i * 65536..(i + 1) * 65536],
            "the local leg lost acknowledged write {i}"
        );
    }
    let diff = differing_units(files.path(0), &img, off, 22 << 20, 65536);
    assert!(
        diff.is_empty(),
        "after the re-add the remote leg differs from the local one in {} 64 KiB units \
         (first at data offset {:?}): a bit was cleared before the remote side flushed",
        diff.len(),
        diff.first()
    );
}

/// Starts qemu-nbd with `--cache=CACHE` again on `sock`.
fn restart_on_cache(img: &Path, export: &str, cache: &str, sock: &Path) -> Server {
    let _ = std::fs::remove_file(sock);
    Server::qemu_nbd_cache(img, export, cache, &["-k", &sock.display().to_string()])
}
