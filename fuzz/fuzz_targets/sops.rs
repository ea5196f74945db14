//! The SOPS decoder on arbitrary bytes behind a `sops` entry: it may refuse anything, but it must
//! never panic, hang or run out of memory, and its errors must name the file. The key is a fixed
//! throwaway age key (made by age-keygen for this target only, never a real secret).
#![no_main]

use libfuzzer_sys::fuzz_target;

const THROWAWAY_KEY: &str = "AGE-SECRET-KEY-12FUGW6G22TDR2HEE7QVW04JP4N086FLNHNNZPXN8JER0YPVMQ86QE9XSRG";

fuzz_target!(|data: &[u8]| {
    let keys = kubesync::sops::Keys::parse(THROWAWAY_KEY).expect("the throwaway key parses");
    for file in ["fuzz.sops.yaml", "fuzz.sops.json"] {
        if let Err(errors) = kubesync::manifests::parse_file_with_keys(file, data, &keys) {
            for e in errors {
                assert!(e.to_string().starts_with(file), "error does not name the file: {e}");
            }
        }
    }
});
