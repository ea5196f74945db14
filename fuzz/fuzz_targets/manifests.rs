//! The manifest loader on arbitrary bytes, as YAML and as JSON: it may refuse anything, but it
//! must never panic, hang or run out of memory, and its errors must name the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for file in ["fuzz.yaml", "fuzz.json"] {
        if let Err(errors) = kubesync::manifests::parse_file(file, data) {
            for e in errors {
                assert!(e.to_string().starts_with(file), "error does not name the file: {e}");
            }
        }
    }
});
