//! Hostile image layers: any bytes as the uncompressed tar of a layer, applied by the image store's layer
//! applier into a fresh directory. It must never panic, hang or write beside the layer's tree (checked by
//! `sandkasten::fuzzing::apply_layer` after each input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sandkasten::fuzzing::apply_layer(data);
});
