//! NBD servers for the tests: qemu-nbd (forked, with its pid file) and
//! nbdkit's eval plugin over a Unix socket (a child), as RAII guards:
//! dropping one stops the server (SIGTERM, then SIGKILL) and removes its
//! pid file.

#![allow(dead_code)] // each test binary uses a different subset

use super::mdfuse::{assert_ok, pid_alive, signal, wait_for, wait_pid_gone};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server process. Dropping it kills it and waits for it.
pub struct Server {
    pub pid: i32,
    child: Option<Child>,
    what: String,
    /// qemu-nbd's pid file, removed with the server.
    pid_file: Option<PathBuf>,
}

impl Server {
    /// `qemu-nbd` serving `img` (raw, O_DIRECT, persistent) as `export`,
    /// on `listen` (`-k SOCKET` or `-b ADDR -p PORT`), forked: it returns
    /// once the server listens.
    pub fn qemu_nbd(img: &Path, export: &str, listen: &[&str]) -> Server {
        Server::qemu_nbd_cache(img, export, "none", listen)
    }

    /// `qemu-nbd` as [`Server::qemu_nbd`], with `--cache=CACHE`
    /// (`writeback`: its writes sit in the image's volatile cache until a
    /// flush).
    pub fn qemu_nbd_cache(img: &Path, export: &str, cache: &str, listen: &[&str]) -> Server {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid_file = std::env::temp_dir().join(format!(
            "mdfuse-test-qemu-nbd-{}-{}.pid",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let cache = format!("--cache={cache}");
        let mut args: Vec<String> = [
            "-f",
            "raw",
            "-x",
            export,
            "-t",
            &cache,
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
            pid_file: Some(pid_file),
        }
    }

    /// nbdkit's eval plugin serving `img` through `dd`, with no flush
    /// method: it advertises no NBD_FLAG_SEND_FLUSH.
    pub fn nbdkit_without_flush(img: &Path, sock: &Path) -> Server {
        Server::nbdkit_eval(img, sock, None)
    }

    /// nbdkit's eval plugin serving `img` through `dd`, whose flush takes
    /// `flush_secs` (then fsyncs the image): a slow stable storage.
    pub fn nbdkit_slow_flush(img: &Path, sock: &Path, flush_secs: u64) -> Server {
        Server::nbdkit_eval(img, sock, Some(flush_secs))
    }

    /// nbdkit's eval plugin serving `img` through `dd` on `sock`; a flush
    /// method taking `flush_secs` when given.
    fn nbdkit_eval(img: &Path, sock: &Path, flush_secs: Option<u64>) -> Server {
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
            ));
        if let Some(secs) = flush_secs {
            cmd.arg(format!("flush=sleep {secs}; sync {img}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let child = cmd.spawn().expect("run nbdkit");
        let s = Server {
            pid: child.id() as i32,
            child: Some(child),
            what: format!(
                "nbdkit eval{}",
                if flush_secs.is_some() {
                    " (slow flush)"
                } else {
                    ""
                }
            ),
            pid_file: None,
        };
        wait_for("nbdkit's socket", Duration::from_secs(20), || sock.exists());
        s
    }

    /// Kills the server now (a crash of the remote side).
    pub fn kill(&mut self) {
        signal(self.pid, libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_pid_gone(self.pid, Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = self.pid_file.take() {
            let _ = std::fs::remove_file(p);
        }
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
