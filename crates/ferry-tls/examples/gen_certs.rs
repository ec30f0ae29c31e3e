//! Writes a directory of test certificates for the TLS benches:
//! `cargo run --release -p ferry-tls --example gen_certs -- DIR COUNT`.
//! Prints the CA certificate's path (`DIR/../ca.pem`).

#[path = "../tests/support/bulk.rs"]
mod bulk;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(count)) = (args.get(1), args.get(2).and_then(|c| c.parse().ok())) else {
        eprintln!("usage: gen_certs DIR COUNT");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("gen_certs: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let ca_path = dir.parent().unwrap_or(dir).join("ca.pem");
    match bulk::write_certs(dir, count).and_then(|ca| std::fs::write(&ca_path, ca)) {
        Ok(()) => println!("{}", ca_path.display()),
        Err(e) => {
            eprintln!("gen_certs: {e}");
            std::process::exit(1);
        }
    }
}
