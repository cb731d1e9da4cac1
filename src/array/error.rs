use crate::bitmap::BitmapError;
use crate::format::superblock::{GeometryError, InvalidSuperblock, SuperblockError};
use crate::io::leg::LegError;
use crate::raid1::EngineError;
use std::path::PathBuf;

/// Why an array cannot be created, assembled, run or stopped. Every variant
/// names the leg or file concerned and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{0}")]
    Leg(#[from] LegError),
    #[error("RAID1 needs at least 2 legs, {0} given")]
    TooFewLegs(usize),
    #[error("at most {max} legs are supported, {given} given")]
    TooManyLegs { given: usize, max: usize },
    #[error("{a} and {b} are the same leg; give each leg once", a = .a.display(), b = .b.display())]
    SameLeg { a: PathBuf, b: PathBuf },
    #[error(
        "legs {a} and {b} have the same file name {name:?}: md/ names a leg dev-<file name>, \
         so give one of them another name (a symlink with another name will do)",
        a = .a.display(), b = .b.display()
    )]
    SameName {
        a: PathBuf,
        b: PathBuf,
        name: String,
    },
    #[error("--size {size} bytes is below the smallest array, one 4 KiB block (4096 bytes)")]
    SizeTooSmall { size: u64 },
    #[error("leg {path}: no valid md superblock: {source} (`mdfuse examine {path}` shows what it holds)", path = .path.display())]
    BadSuperblock {
        path: PathBuf,
        source: SuperblockError,
    },
    #[error(
        "leg {path}: its superblock cannot be used: {source}. What to do: {advice}",
        path = .path.display(), advice = .source.advice()
    )]
    InvalidSuperblock {
        path: PathBuf,
        source: InvalidSuperblock,
    },
    #[error(
        "leg {path}: its role (dev_roles) is slot {slot}, but the freshest superblock \
         ({freshest}) gives the array raid_disks {raid_disks}: there is no such slot. \
         What to do: give only this array's legs; to start without this leg, leave it \
         out and add --run",
        path = .path.display(), freshest = .freshest.display()
    )]
    SlotBeyondArray {
        path: PathBuf,
        slot: u16,
        raid_disks: u32,
        freshest: PathBuf,
    },
    #[error(
        "leg {path}: its data_size is {data_size} sectors, but the freshest superblock \
         ({freshest}) gives the array size {size} sectors: the array does not fit this \
         leg's data area. What to do: give only this array's legs; to start without this \
         leg, leave it out and add --run",
        path = .path.display(), freshest = .freshest.display()
    )]
    DataSizeBelowArray {
        path: PathBuf,
        data_size: u64,
        size: u64,
        freshest: PathBuf,
    },
    #[error(
        "leg {path} already carries an md superblock (array {uuid}, name {name:?}); \
         use --force to overwrite it", path = .path.display()
    )]
    HasSuperblock {
        path: PathBuf,
        uuid: String,
        name: String,
    },
    #[error("leg {path} holds {what}; use --force to overwrite it", path = .path.display())]
    HasSignature { path: PathBuf, what: &'static str },
    #[error("leg {path}: {source}", path = .path.display())]
    Geometry {
        path: PathBuf,
        source: GeometryError,
    },
    #[error(
        "--size {size} bytes does not fit leg {path}: {avail} bytes are usable after its data offset",
        path = .path.display()
    )]
    SizeTooLarge {
        path: PathBuf,
        size: u64,
        avail: u64,
    },
    #[error(
        "leg {path} belongs to array {found}, but {first} belongs to array {expected}: \
         these are legs of two different arrays", path = .path.display(), first = .first.display()
    )]
    ForeignLeg {
        path: PathBuf,
        found: String,
        first: PathBuf,
        expected: String,
    },
    #[error(
        "leg {path} is md level {level} ({name}), not raid1: mdfuse serves RAID1 only. What to \
         do: assemble it with Linux md (mdadm --assemble)",
        path = .path.display(), name = crate::report::examine::level_name(*.level)
    )]
    NotRaid1 { path: PathBuf, level: i32 },
    #[error("legs {a} and {b} both claim slot {slot}", a = .a.display(), b = .b.display())]
    DuplicateSlot { a: PathBuf, b: PathBuf, slot: u16 },
    #[error("leg {path} is {what} in its own superblock; it cannot be assembled as an active member", path = .path.display())]
    NotActive { path: PathBuf, what: &'static str },
    #[error(
        "array {name} is missing {missing}: slots {present:?} of {raid_disks} are present and current. \
         Give every leg, or add --run to start it degraded"
    )]
    Incomplete {
        name: String,
        missing: String,
        present: Vec<u16>,
        raid_disks: u32,
    },
    #[error(
        "leg(s) {legs} are half-recovered (their recovery was interrupted) and hold no \
         complete copy of the array; give an in-sync leg too"
    )]
    OnlyRecovering { legs: String },
    #[error(
        "the legs' histories diverged (each was written while the other was away): {histories}. \
         Choose the history to keep with --force-from LEG (mount.mdfuse: force_from=LEG); \
         the other legs are then left out and need a full recovery"
    )]
    Diverged { histories: String },
    #[error("--force-from {path}: that leg is not among the legs given", path = .path.display())]
    ForceFromNotGiven { path: PathBuf },
    #[error("leg {path} is smaller ({size} bytes) than its superblock says the array needs ({needed} bytes)", path = .path.display())]
    LegTooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("cannot update the superblock of leg {path}: {source}", path = .path.display())]
    WriteSuperblock { path: PathBuf, source: LegError },
    #[error("cannot zero the data region of leg {path}: {source}", path = .path.display())]
    Zero {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bitmap: {0}")]
    Bitmap(#[from] BitmapError),
    #[error("{0}")]
    BlockMap(#[from] crate::blockmap::BlockMapError),
    #[error("bitmap file {path}: {what}", path = .path.display())]
    BitmapFile { path: PathBuf, what: String },
    #[error(
        "leg {path}: internal bitmap: {what}. What to do: give only this array's legs \
         (`mdfuse examine-bitmap {path}` shows the bitmap it holds); to serve the array \
         without its internal bitmap, remove it with Linux md (mdadm --grow /dev/mdX \
         --bitmap=none)",
        path = .path.display()
    )]
    InternalBitmap { path: PathBuf, what: String },
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// Busy (md's EBUSY): a sync runs, the leg is in sync, no slot is free.
    #[error("{0}")]
    Busy(String),
    /// A bitmap change (`bitmap/location`) refused, with the errno md's
    /// store would give.
    #[error("bitmap change refused: {why}")]
    BitmapChange { why: String, errno: i32 },
    #[error("the array is read-only")]
    ReadOnly,
    /// The leg is not what the request needs it to be (md's EINVAL).
    #[error("{path}: {why}", path = .path.display())]
    NotAMember { path: PathBuf, why: String },
    #[error("the array has no member left")]
    NoMemberLeft,
    #[error("cannot start {what}: {source}")]
    Thread {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot read random bytes for a UUID: {0}")]
    Random(std::io::Error),
}

impl ArrayError {
    /// The errno a control-file write reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ArrayError::Busy(_) => libc::EBUSY,
            ArrayError::BitmapChange { errno, .. } => *errno,
            ArrayError::ReadOnly => libc::EROFS,
            ArrayError::NoMemberLeft => libc::EIO,
            ArrayError::Thread { source, .. } => source.raw_os_error().unwrap_or(libc::EAGAIN),
            ArrayError::Leg(e) => e.errno(),
            ArrayError::Engine(e) => e.errno(),
            ArrayError::HasSuperblock { .. }
            | ArrayError::HasSignature { .. }
            | ArrayError::SameName { .. } => libc::EEXIST,
            ArrayError::LegTooSmall { .. } => libc::ENOSPC,
            _ => libc::EINVAL,
        }
    }
}
