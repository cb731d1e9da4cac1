//! Transports: what serves a running array to its users. The array
//! implements [`ServedArray`](crate::array::ServedArray); a transport only
//! translates its requests into calls on [`core::MountCore`] (the mount's
//! files: `array.img`, `mdstat`, `md/`) and knows nothing of legs,
//! superblocks or bitmaps. Two carry FUSE requests: /dev/fuse through
//! fuser ([`fuse`]) and FUSE over io_uring ([`ring`]); [`serve`] mounts,
//! picks one ([`Transport`]) and runs its threads.

pub mod core;
pub mod fuse;
pub mod ring;
pub mod serve;

/// How FUSE requests reach the daemon (`--transport`, `transport=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// io_uring when the kernel offers it at INIT and io_uring is usable,
    /// else /dev/fuse; the log says which and why.
    #[default]
    Auto,
    /// FUSE over io_uring, or refuse to start.
    Uring,
    /// read() and writev() on /dev/fuse.
    DevFuse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Uring => "uring",
            Transport::DevFuse => "dev-fuse",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "uring" => Ok(Transport::Uring),
            "dev-fuse" => Ok(Transport::DevFuse),
            _ => Err(format!("{s:?}: not a transport (auto, uring or dev-fuse)")),
        }
    }
}
