//! Text renderings in md's words: `mdadm --examine`, `--examine-bitmap`,
//! `--detail`, `/proc/mdstat`, and the same as JSON (`json`). Pure: structs in, strings out.

pub mod detail;
pub mod examine;
pub mod examine_bitmap;
pub mod json;
pub mod mdstat;

pub use examine::format_uuid as uuid_string;

/// mdadm's `human_size`: "" below 5000 KiB, else " (x.yy MiB x.yy MB)" (GiB/GB from
/// 2 GiB, TiB/TB from 2 TiB), each rounded to hundredths.
pub fn human_size(bytes: u128) -> String {
    const MIB: u128 = 1 << 20;
    const GIB: u128 = 1 << 30;
    const TIB: u128 = 1 << 40;
    let (binary, decimal, bin_unit, dec_unit) = if bytes < 5000 * 1024 {
        return String::new();
    } else if bytes < 2 * GIB {
        (MIB, 1_000_000u128, "MiB", "MB")
    } else if bytes < 2 * TIB {
        (GIB, 1_000_000_000, "GiB", "GB")
    } else {
        (TIB, 1_000_000_000_000, "TiB", "TB")
    };
    // Half-hundredths rounded half up: mdadm's `(x + 1) / 2`.
    let centi_bin = (bytes * 200 / binary).div_ceil(2);
    let centi_dec = (bytes / (decimal / 200)).div_ceil(2);
    format!(
        " ({}.{:02} {bin_unit} {}.{:02} {dec_unit})",
        centi_bin / 100,
        centi_bin % 100,
        centi_dec / 100,
        centi_dec % 100
    )
}
