//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/) through the same
//! entry points the cargo-fuzz targets call, on stable: inputs the fuzzer once found
//! interesting, crashes included once fixed, stay regression tests.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("request_head", condo::fuzzing::request_head),
    ("path", condo::fuzzing::path),
    ("host_name", condo::fuzzing::host_name),
    ("chunked", condo::fuzzing::chunked),
    ("ipc_message", condo::fuzzing::ipc_message),
    ("cgi_head", condo::fuzzing::cgi_head),
    ("fastcgi_records", condo::fuzzing::fastcgi_records),
    ("proxy_header", condo::fuzzing::proxy_header),
    ("client_hello", condo::fuzzing::client_hello),
];

#[test]
fn every_corpus_file_passes_its_target() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = base.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in &files {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
        eprintln!("{name}: {} inputs", files.len());
    }
}
