//! Recognises what already lives on a device from its first bytes, so
//! `create` does not destroy a filesystem or another array by accident.

/// Bytes from the start of the device that `detect` needs.
pub const PROBE_BYTES: usize = 65536 + 4096;

/// Names what `head` (the device's first bytes) holds, if anything we know.
/// An md v1.2 superblock is checked separately (it sits at 4 KiB).
pub fn detect(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xef]) {
        return Some("an ext2/ext3/ext4 filesystem");
    }
    if at(0, b"XFSB") {
        return Some("an xfs filesystem");
    }
    if at(65536 + 64, b"_BHRfS_M") {
        return Some("a btrfs filesystem");
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Some("a swap area");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("a LUKS encrypted volume");
    }
    if at(0, &MD_MAGIC) {
        return Some("an md v1.1 superblock");
    }
    if at(512, b"EFI PART") {
        return Some("a GPT partition table");
    }
    if at(510, &[0x55, 0xaa]) {
        return Some("a DOS partition table or boot sector");
    }
    None
}

/// md's superblock magic, in its on-disk (little-endian) byte order; the
/// same for every metadata version.
pub const MD_MAGIC: [u8; 4] = [0xfc, 0x4e, 0x2b, 0xa9];

/// Where the md superblocks that live near a device's end would sit, for a
/// device of `size` bytes (4 KiB-aligned offsets): v0.90 in the last whole
/// 64 KiB before the end's 64 KiB boundary, v1.0 8 KiB before the end.
pub fn md_tail_superblocks(size: u64) -> [(Option<u64>, &'static str); 2] {
    let v090 = (size & !0xffff).checked_sub(0x10000);
    let v10 = (size / 512)
        .checked_sub(16)
        .map(|sectors| (sectors & !7) * 512);
    [
        (v090, "an md v0.90 superblock"),
        (v10, "an md v1.0 superblock"),
    ]
}

/// True when `block` starts with md's superblock magic.
pub fn has_md_magic(block: &[u8]) -> bool {
    block.get(..4) == Some(&MD_MAGIC[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_nothing() {
        assert_eq!(detect(&vec![0u8; PROBE_BYTES]), None);
        assert_eq!(detect(&[]), None);
    }

    #[test]
    fn finds_ext4_and_xfs() {
        let mut b = vec![0u8; PROBE_BYTES];
        b[1080] = 0x53;
        b[1081] = 0xef;
        assert_eq!(detect(&b), Some("an ext2/ext3/ext4 filesystem"));
        let mut b = vec![0u8; PROBE_BYTES];
        b[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect(&b), Some("an xfs filesystem"));
    }

    #[test]
    fn md_tail_superblocks_sit_where_md_puts_them() {
        // A 100 MiB device: v0.90 at 100 MiB - 64 KiB, v1.0 at 100 MiB - 8 KiB.
        let size = 100 << 20;
        let [(v090, _), (v10, _)] = md_tail_superblocks(size);
        assert_eq!(v090, Some(size - 65536));
        assert_eq!(v10, Some(size - 8192));
        // Not a multiple of 64 KiB: v0.90 rounds down first.
        let [(v090, _), (v10, _)] = md_tail_superblocks(size + 5000);
        assert_eq!(v090, Some(size - 65536));
        assert_eq!(v10, Some((size + 5000) / 512 / 8 * 8 * 512 - 8192));
        assert_eq!(md_tail_superblocks(4096)[0].0, None);
        assert_eq!(md_tail_superblocks(4096)[1].0, None);
    }
}
