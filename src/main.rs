fn main() {
    eprintln!("mdfuse: not built yet");
    std::process::exit(1);
}
