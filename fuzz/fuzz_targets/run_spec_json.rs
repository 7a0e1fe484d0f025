//! What crosses the host–guest boundary: a run specification as the guest agent receives it
//! (`RunSpec::from_json` + `validate`, then the agent's `sandbox_for`), and the agent's verdict as the host reads it from
//! the control port (`find_verdict` over the transcript, `Outcome::from_report_json`). Either side may be
//! hostile to the other: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandkasten::Outcome;
use sandkasten::protocol::{RunSpec, find_verdict};

fuzz_target!(|data: &[u8]| {
    // Host -> guest.
    if let Ok(spec) = RunSpec::from_json(data) {
        if spec.validate().is_ok() {
            let line = spec.to_json_line();
            let again = RunSpec::from_json(line.as_bytes())
                .unwrap_or_else(|e| panic!("a serialised spec does not parse: {e}\n{line}"));
            assert_eq!(
                again.to_json_line(),
                line,
                "the JSON round trip changed the spec"
            );
            again.validate().expect("a valid spec stays valid");
            let _ = sandkasten::fuzzing::sandbox_for(&spec);
        }
    }
    // Guest -> host: the transcript of the control port, then the bytes as one JSON value.
    let text = String::from_utf8_lossy(data);
    if let Some(v) = find_verdict(&text) {
        check_verdict(&v);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        check_verdict(&v);
    }
});

/// A verdict the host accepts reads back the same through the report it writes.
fn check_verdict(v: &serde_json::Value) {
    let Some(o) = Outcome::from_report_json(v) else {
        return;
    };
    let report = o.report_json();
    let back = Outcome::from_report_json(&report).expect("our own report parses");
    assert_eq!(back.status, o.status, "{report}");
    let _ = o.status.exit_code();
}
