fn main() {
    eprintln!("mount.mdfuse: not built yet");
    std::process::exit(1);
}
