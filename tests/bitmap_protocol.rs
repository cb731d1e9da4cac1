//! The bitmap service over a real file (ordinary file I/O store), checked
//! with the real `mdadm --examine-bitmap`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mdfuse::bitmap::{
    create_bitmap_file, load_bitmap_file, BitmapOptions, FilePageStore, WriteIntent,
    WriteIntentBitmap,
};
use mdfuse::format::bitmap::BitmapSuper;
use mdfuse::report::examine_bitmap::render_examine_bitmap;

/// `mdadm -X path`, or None when mdadm is not installed.
fn mdadm_examine(path: &Path) -> Option<String> {
    let out = Command::new("mdadm").arg("-X").arg(path).output().ok()?;
    assert!(
        out.status.success(),
        "mdadm -X failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

fn ours(path: &Path) -> String {
    let (sb, bits) = load_bitmap_file(path).unwrap();
    render_examine_bitmap(&path.display().to_string(), &sb, &bits)
}

fn check_against_mdadm(path: &Path) -> String {
    let mine = ours(path);
    if let Some(theirs) = mdadm_examine(path) {
        assert_eq!(mine, theirs);
    } else {
        eprintln!("mdadm not installed: comparing with our own rendering only");
    }
    mine
}

#[test]
fn file_store_protocol_agrees_with_mdadm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("md0.bitmap");
    // 1 GiB array, 4 KiB chunks: 262144 chunks, 32 KiB of bits, 9 file pages.
    let chunk = 4096u64;
    let uuid = *b"\x01\x23\x45\x67\x89\xab\xcd\xef\x10\x32\x54\x76\x98\xba\xdc\xfe";
    let sb = BitmapSuper::new_for_array(uuid, 1 << 21, chunk as u32, 5, 7);
    create_bitmap_file(&path, &sb, false).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 256 + 32768);
    let text = check_against_mdadm(&path);
    assert!(
        text.contains("262144 bits (chunks), 0 dirty (0.0%)"),
        "{text}"
    );

    let (sb, bits) = load_bitmap_file(&path).unwrap();
    let store = Arc::new(FilePageStore::open(&path).unwrap());
    let opts = BitmapOptions {
        clear_delay: Duration::ZERO,
        daemon_tick: None,
        spawn_daemon: false,
        loaded_bits_needed: true,
        array_events: Some(7),
    };
    let bm = WriteIntentBitmap::new(sb, &bits, store, opts).unwrap();
    // Page 0's last chunk and page 1's first (30719, 30720), a run, the last chunk.
    let writes = [
        (30719 * chunk, 2 * chunk),
        (100_000 * chunk, 10 * chunk),
        (262_143 * chunk, chunk),
    ];
    for &(o, l) in &writes {
        bm.start_write(o, l).unwrap();
    }
    let text = check_against_mdadm(&path);
    assert!(text.contains("13 dirty"), "{text}");
    let (_, bits) = load_bitmap_file(&path).unwrap();
    let on_disk = mdfuse::format::bitmap::dirty_chunks(&bits, 262144);
    assert_eq!(on_disk, bm.dirty_chunks());

    // One write misses a leg: it stays dirty through a clean stop.
    bm.end_write(writes[0].0, writes[0].1, true);
    bm.end_write(writes[1].0, writes[1].1, false);
    bm.end_write(writes[2].0, writes[2].1, true);
    bm.run_daemon_pass();
    let text = check_against_mdadm(&path);
    assert!(text.contains("10 dirty"), "{text}");
    bm.update_header(9).unwrap();
    bm.stop_clean().unwrap();
    let text = check_against_mdadm(&path);
    assert!(text.contains("Events : 9"), "{text}");
    assert!(text.contains("Events Cleared : 7"), "{text}");
    assert!(text.contains("10 dirty"), "{text}");
}

#[test]
fn clean_stop_leaves_zero_dirty_for_mdadm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("md0.bitmap");
    let sb = BitmapSuper::new_for_array([5; 16], 63488, 65536, 5, 2);
    create_bitmap_file(&path, &sb, false).unwrap();
    let (sb, bits) = load_bitmap_file(&path).unwrap();
    let store = Arc::new(FilePageStore::open(&path).unwrap());
    let mut opts = BitmapOptions::for_super(&sb);
    opts.spawn_daemon = true;
    let bm = WriteIntentBitmap::new(sb, &bits, store, opts).unwrap();
    for c in 0..496u64 {
        bm.start_write(c * 65536, 65536).unwrap();
        bm.end_write(c * 65536, 65536, true);
    }
    let text = check_against_mdadm(&path);
    assert!(text.contains("496 dirty (100.0%)"), "{text}");
    bm.stop_clean().unwrap();
    let text = check_against_mdadm(&path);
    assert!(text.contains("496 bits (chunks), 0 dirty (0.0%)"), "{text}");
    assert!(text.contains("Events Cleared : 2"), "{text}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 318);
}
