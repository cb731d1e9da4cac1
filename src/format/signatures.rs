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
    if at(0, &[0xfc, 0x4e, 0x2b, 0xa9]) {
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
}
