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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A server process. Dropping it kills it and waits for it.
struct Server {
    pid: i32,
    child: Option<Child>,
    what: String,
}

impl Server {
    /// `qemu-nbd` serving `img` (raw, O_DIRECT, persistent) as `export`,
    /// on `listen` (`-k SOCKET` or `-b ADDR -p PORT`), forked: it returns
    /// once the server listens.
    fn qemu_nbd(img: &Path, export: &str, listen: &[&str]) -> Server {
        let pid_file = img.with_extension("qemu-nbd.pid");
        let mut args: Vec<String> = [
            "-f",
            "raw",
            "-x",
            export,
            "-t",
            "--cache=none",
            "--aio=threads",
            "--fork",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--pid-file={}", pid_file.display()));
        args.extend(listen.iter().map(|s| s.to_string()));
        args.push(img.display().to_string());
        let out = Command::new("qemu-nbd")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run qemu-nbd");
        assert_ok(&format!("qemu-nbd {}", args.join(" ")), &out);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("qemu-nbd's pid file");
        Server {
            pid,
            child: None,
            what: format!("qemu-nbd {}", args.join(" ")),
        }
    }

    /// nbdkit's eval plugin serving `img` through `dd`, with no flush
    /// method: it advertises no NBD_FLAG_SEND_FLUSH.
    fn nbdkit_without_flush(img: &Path, sock: &Path) -> Server {
        let img = img.display().to_string();
        let size = std::fs::metadata(&img).expect("image").len();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(sock)
            .arg("eval")
            .arg(format!("get_size=echo {size}"))
            .arg(format!(
                "pread=dd if={img} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none"
            ))
            .arg(format!(
                "pwrite=dd of={img} seek=$4 conv=notrunc oflag=seek_bytes status=none"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = cmd.spawn().expect("run nbdkit");
        let s = Server {
            pid: child.id() as i32,
            child: Some(child),
            what: "nbdkit eval".into(),
        };
        wait_for("nbdkit's socket", Duration::from_secs(20), || sock.exists());
        s
    }

    /// Kills the server now (a crash of the remote side).
    fn kill(&mut self) {
        signal(self.pid, libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_pid_gone(self.pid, Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        if pid_alive(self.pid) {
            signal(self.pid, libc::SIGTERM);
            if !wait_pid_gone(self.pid, Duration::from_secs(10)) {
                eprintln!("warning: killing {} ({})", self.what, self.pid);
                signal(self.pid, libc::SIGKILL);
                wait_pid_gone(self.pid, Duration::from_secs(5));
            }
        }
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
    assert_eq!(m.md("dev-nbd-127.0.0.1-10809-leg1/state"), "in_sync");
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
    assert!(mdstat.contains(&format!("{name}[1](V)")), "{mdstat}");
    assert!(!mdstat.contains("leg0.img[0](V)"), "{mdstat}");
    assert_eq!(m.md(&format!("dev-{name}/state")), "in_sync,volatile");
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
            .any(|l| l.contains("active sync volatile") && l.ends_with(name)),
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
    assert!(mdstat.contains("nbd-unix-add.sock-add["), "{mdstat}");
    m.stop();
    assert_data_identical(files.path(0), &img);
    server.kill();
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
        m.md("dev-nbd-unix-leg1.sock-leg1/state") == "faulty"
    });
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    // The server comes back on the same image: the leg comes back alone.
    let _server = restart_on(&img, "leg1", &sock);
    wait_for("the NBD leg back in sync", Duration::from_secs(60), || {
        dev_state(&m, "nbd-unix-leg1.sock-leg1").as_deref() == Some("in_sync")
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
    assert_eq!(m.md("dev-nbd-unix-leg1.sock-leg1/state"), "faulty");
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
    assert_eq!(m.md("dev-nbd-unix-leg1.sock-leg1/state"), "faulty");
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
    assert_eq!(dev_state(&m, dev).as_deref(), Some("faulty"));
    assert!(took < Duration::from_secs(20), "the write took {took:?}");
    assert!(m.log().contains("no reply within 2 s"), "{}", m.log());
    link("up");
    wait_for("the NBD leg back in sync", Duration::from_secs(90), || {
        dev_state(&m, dev).as_deref() == Some("in_sync")
    });
    m.wait_sync_idle(Duration::from_secs(60));
    let back = std::fs::read(m.image()).expect("read array.img");
    assert!(back[..1 << 20] == first[..] && back[4 << 20..5 << 20] == second[..]);
    m.stop();
    assert_data_identical(files.path(0), &img);
}
