//! Where `mdfuse monitor` sends an event: standard output (always, so it
//! works out of the box), `--program`, `--syslog`, `--mail` through a
//! sendmail when one is installed; and `--daemonise` with a pid file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One event, as mdadm names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub mountpoint: String,
    pub leg: Option<String>,
}

/// Where sendmail is looked for (the MTAs' usual place, and the old one).
const SENDMAIL: [&str; 2] = ["/usr/sbin/sendmail", "/usr/lib/sendmail"];

/// Events worth a mail or a critical syslog line (mdadm mails Fail,
/// FailSpare, DegradedArray, SparesMissing and TestMessage; a daemon gone
/// is a failure too).
fn is_alarm(name: &str) -> bool {
    matches!(
        name,
        "Fail" | "FailSpare" | "DegradedArray" | "SparesMissing" | "DeviceDisappeared"
    )
}

pub struct Outputs {
    pub program: Option<PathBuf>,
    pub syslog: bool,
    /// The address, and the sendmail found at start.
    pub mail: Option<(String, PathBuf)>,
}

impl Outputs {
    /// Checks the outputs asked for: a mail address needs a sendmail.
    pub fn new(
        program: Option<PathBuf>,
        syslog: bool,
        mail: Option<String>,
    ) -> Result<Outputs, String> {
        let mail = match mail {
            None => None,
            Some(addr) => {
                let sendmail = SENDMAIL
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
                    .ok_or_else(|| {
                        format!(
                            "--mail {addr}: no sendmail is installed ({}): install a mail \
                             transfer agent (e.g. `apt install msmtp-mta` or postfix), or \
                             use --program or --syslog",
                            SENDMAIL.join(", ")
                        )
                    })?;
                Some((addr, sendmail))
            }
        };
        if syslog {
            static IDENT: &[u8] = b"mdfuse-monitor\0";
            // SAFETY: IDENT is a static NUL-terminated string, as openlog keeps the pointer.
            unsafe { libc::openlog(IDENT.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
        }
        Ok(Outputs {
            program,
            syslog,
            mail,
        })
    }

    /// Sends each event to every output.
    pub fn report(&self, events: &[Event]) {
        for e in events {
            let line = match &e.leg {
                Some(leg) => format!(
                    "{} event detected on mdfuse array {}, component device {leg}",
                    e.name, e.mountpoint
                ),
                None => format!("{} event detected on mdfuse array {}", e.name, e.mountpoint),
            };
            // A closed standard output (a detached monitor) is not an error.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            drop(out);
            if self.syslog {
                send_syslog(&line, is_alarm(&e.name) || e.name == "TestMessage");
            }
            if let Some((addr, sendmail)) = &self.mail {
                if is_alarm(&e.name) || e.name == "TestMessage" {
                    if let Err(err) = send_mail(sendmail, addr, e, &line) {
                        eprintln!("mdfuse: monitor: mail to {addr}: {err}");
                    }
                }
            }
            if let Some(prog) = &self.program {
                let mut cmd = std::process::Command::new(prog);
                cmd.arg(&e.name).arg(&e.mountpoint);
                if let Some(leg) = &e.leg {
                    cmd.arg(leg);
                }
                match cmd.status() {
                    Ok(s) if s.success() => {}
                    Ok(s) => eprintln!("mdfuse: monitor: {} {}: {s}", prog.display(), e.name),
                    Err(err) => {
                        eprintln!("mdfuse: monitor: cannot run {}: {err}", prog.display())
                    }
                }
            }
        }
    }
}

fn send_syslog(line: &str, critical: bool) {
    let Ok(msg) = std::ffi::CString::new(line.replace('\0', "")) else {
        return;
    };
    let priority = if critical {
        libc::LOG_CRIT
    } else {
        libc::LOG_INFO
    };
    // SAFETY: a "%s" format with one C string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
}

fn send_mail(sendmail: &Path, addr: &str, e: &Event, line: &str) -> Result<(), String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut child = std::process::Command::new(sendmail)
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", sendmail.display()))?;
    let body = format!(
        "From: mdfuse monitoring <root>\nTo: {addr}\nSubject: {} event on {}:{host}\n\n\
         This is an automatically generated mail message from mdfuse monitor\n\
         running on {host}\n\n{line}.\n",
        e.name, e.mountpoint
    );
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .map_err(|err| err.to_string())?;
    }
    let status = child.wait().map_err(|err| err.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{}: {status}", sendmail.display()))
    }
}

/// `--daemonise`: the monitor goes on in a child of its own session, with
/// standard input and output on /dev/null (errors still go to standard
/// error); the parent writes the child's pid to `pid_file`, prints it and
/// returns Some(exit code). In the child, None. Called before any thread
/// exists.
pub fn daemonise(pid_file: Option<&Path>) -> Result<Option<i32>, String> {
    // SAFETY: the process has one thread here (the monitor starts none
    // before), so the child may go on with anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        if let Some(p) = pid_file {
            if let Err(e) = std::fs::write(p, format!("{pid}\n")) {
                // SAFETY: kill has no memory preconditions; the child is ours.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                return Err(format!("--pid-file {}: {e}", p.display()));
            }
        }
        println!("{pid}");
        return Ok(Some(0));
    }
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    let _ = std::env::set_current_dir("/");
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors from one we own.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    Ok(None)
}
