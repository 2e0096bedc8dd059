//! A deliberately broken target: it panics on its first input. `fuzz/selftest.sh` runs `run.sh` on
//! it to show that the fuzzing gate goes red when a target crashes. Never part of the normal run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    panic!("planted fault ({} bytes): run.sh must report this as a crash", data.len());
});
