//! Creating and loading a bitmap FILE.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::BitmapError;
use crate::format::bitmap::{BitmapSuper, BITMAP_SUPER_SIZE};

/// Writes a new bitmap file: the header and all-clear bits, as real data (no
/// fallocate: the block map refuses unwritten extents), exactly
/// `256 + ceil(chunks/8)` bytes long, then fsyncs the file and its directory.
/// An existing file is refused unless `force`.
pub fn create_bitmap_file(path: &Path, sb: &BitmapSuper, force: bool) -> Result<(), BitmapError> {
    let shown = path.display();
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            " (it already exists; use --force to overwrite)"
        } else {
            ""
        };
        BitmapError::io(format!("bitmap FILE {shown}: cannot create{hint}"), e)
    })?;
    let mut content = Vec::with_capacity(sb.file_len() as usize);
    content.extend_from_slice(&sb.to_bytes());
    content.resize(sb.file_len() as usize, 0);
    file.write_all(&content)
        .and_then(|()| file.set_len(sb.file_len()))
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            BitmapError::io(
                format!("bitmap FILE {shown}: writing {} bytes", content.len()),
                e,
            )
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        BitmapError::io(
            format!("bitmap FILE {shown}: fsync of directory {}", dir.display()),
            e,
        )
    })
}

/// Reads a bitmap file: its header and the bits after it (exactly
/// ceil(chunks/8) bytes). Reads with O_DIRECT when the filesystem allows,
/// because raw device writes bypass the page cache, which may be stale;
/// otherwise drops the cached pages (POSIX_FADV_DONTNEED) and reads normally.
pub fn load_bitmap_file(path: &Path) -> Result<(BitmapSuper, Vec<u8>), BitmapError> {
    let shown = path.display();
    let bytes = match crate::blockmap::read_file_direct(path) {
        Ok(b) => b,
        Err(e) => {
            log::debug!(
                "bitmap FILE {shown}: O_DIRECT read failed ({e}); reading through the page cache"
            );
            read_uncached(path)
                .map_err(|e| BitmapError::io(format!("bitmap FILE {shown}: reading"), e))?
        }
    };
    let sb = BitmapSuper::parse(&bytes)
        .map_err(|e| BitmapError::msg(format!("bitmap FILE {shown}: {e}")))?;
    let need = sb.file_len() as usize;
    if bytes.len() < need {
        return Err(BitmapError::msg(format!(
            "bitmap FILE {shown}: {} bytes, but {} chunks of {} bytes need {need}; the file is truncated",
            bytes.len(),
            sb.chunks(),
            sb.chunksize
        )));
    }
    Ok((sb, bytes[BITMAP_SUPER_SIZE..need].to_vec()))
}

fn read_uncached(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    // SAFETY: plain advice on an open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_roundtrip_and_refuse_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("md0.bitmap");
        let sb = BitmapSuper::new_for_array([3; 16], 63488, 65536, 5, 4);
        create_bitmap_file(&path, &sb, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 318);
        let (got, bits) = load_bitmap_file(&path).unwrap();
        assert_eq!(got, sb);
        assert_eq!(bits, vec![0u8; 62]);
        let err = create_bitmap_file(&path, &sb, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        create_bitmap_file(&path, &sb, true).unwrap();
    }

    #[test]
    fn load_refuses_truncated_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let sb = BitmapSuper::new_for_array([3; 16], 63488, 65536, 5, 4);
        std::fs::write(&path, &sb.to_bytes()[..]).unwrap();
        let err = load_bitmap_file(&path).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&path, vec![0u8; 400]).unwrap();
        let err = load_bitmap_file(&path).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
