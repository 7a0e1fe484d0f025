//! The state of a container as `runc state` prints it: the runtime-spec's state (`ociVersion`, `id`,
//! `status`, `pid`, `bundle`, `annotations`) plus runc's `rootfs`, `created` and `owner`, which tools written
//! for runc read too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::spec::OCI_VERSION_MAX;

/// Where a container is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (`create` has not finished).
    Creating,
    /// Created: the process waits for `start`.
    Created,
    /// The process runs.
    Running,
    /// The process has exited.
    Stopped,
}

/// A container's state document, in runc's field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The runtime-spec version of the document.
    pub oci_version: String,
    /// The container's id.
    pub id: String,
    /// The process's pid on the host (0 when there is none, as runc writes it).
    #[serde(default)]
    pub pid: i32,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// The bundle directory, absolute.
    pub bundle: PathBuf,
    /// The root filesystem directory, absolute (runc).
    #[serde(default)]
    pub rootfs: PathBuf,
    /// When it was created, RFC 3339 in UTC (runc).
    pub created: Timestamp,
    /// The annotations of its `config.json`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The user who owns it (runc; empty when not tracked).
    #[serde(default)]
    pub owner: String,
}

impl State {
    /// A container being created now: no pid yet, no annotations, no owner.
    pub fn new(id: impl Into<String>, bundle: PathBuf, rootfs: PathBuf) -> State {
        State {
            oci_version: OCI_VERSION_MAX.into(),
            id: id.into(),
            pid: 0,
            status: Status::Creating,
            bundle,
            rootfs,
            created: Timestamp(SystemTime::now()),
            annotations: BTreeMap::new(),
            owner: String::new(),
        }
    }
}

/// A point in time, written as RFC 3339 in UTC with nanoseconds (trailing zeros dropped, as Go writes
/// runc's); read with any offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, nanos) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let back = d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0);
                (-back, (1_000_000_000 - d.subsec_nanos()) % 1_000_000_000)
            }
        };
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )?;
        if nanos > 0 {
            let frac = format!("{nanos:09}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;

    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    fn from_str(text: &str) -> Result<Timestamp, String> {
        let bad = || format!("{text:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z");
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return Err(bad());
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
            let part = text.get(range).ok_or_else(bad)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(bad());
        }
        let mut rest = &text[19..];
        let mut nanos = 0u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            for (i, c) in frac[..digits].bytes().enumerate().take(9) {
                nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
            }
            rest = &frac[digits..];
        }
        let offset = match rest.as_bytes() {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [h1, h2, m1, m2];
                if !digits.iter().all(|c| c.is_ascii_digit()) {
                    return Err(bad());
                }
                let [h1, h2, m1, m2] = digits.map(|c| i64::from(c - b'0'));
                let secs = (h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60;
                if *sign == b'-' { -secs } else { secs }
            }
            _ => return Err(bad()),
        };
        let days = days_from_civil(year, month as u32, day as u32);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset;
        let time = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        };
        Ok(Timestamp(time))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian calendar, in 400-year eras).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count since 1970-01-01 of a date (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> Timestamp {
        Timestamp(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(at(0, 0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400, 0).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(
            at(1_714_564_800, 120_000_000).to_string(),
            "2024-05-01T12:00:00.12Z"
        );
        assert_eq!(
            at(4_102_444_799, 999_999_999).to_string(),
            "2099-12-31T23:59:59.999999999Z"
        );
        let before = Timestamp(UNIX_EPOCH - Duration::new(1, 500_000_000));
        assert_eq!(before.to_string(), "1969-12-31T23:59:58.5Z");
        for t in [
            at(0, 0),
            at(951_782_400, 1),
            at(1_714_564_800, 120_000_000),
            before,
        ] {
            assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
        }
        // runc's form and other offsets.
        let runc: Timestamp = "2024-05-01T12:00:00.123456789Z".parse().unwrap();
        assert_eq!(runc, at(1_714_564_800, 123_456_789));
        let local: Timestamp = "2024-05-01T14:00:00+02:00".parse().unwrap();
        assert_eq!(local, at(1_714_564_800, 0));
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        for days in [-800_000, -1, 0, 59, 60, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn state_round_trips_in_runc_form() {
        let mut state = State::new(
            "web",
            "/srv/bundles/web".into(),
            "/srv/bundles/web/rootfs".into(),
        );
        state.status = Status::Running;
        state.pid = 4242;
        state.created = at(1_714_564_800, 5);
        state
            .annotations
            .insert("run.oci.sandbox.backend".into(), "vm".into());
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ociVersion": "1.3.0",
                "id": "web",
                "pid": 4242,
                "status": "running",
                "bundle": "/srv/bundles/web",
                "rootfs": "/srv/bundles/web/rootfs",
                "created": "2024-05-01T12:00:00.000000005Z",
                "annotations": {"run.oci.sandbox.backend": "vm"},
                "owner": "",
            })
        );
        let back: State = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        // What runc prints for a stopped container reads too.
        let runc = r#"{"ociVersion":"1.0.2-dev","id":"c1","pid":0,"status":"stopped",
            "bundle":"/b","rootfs":"/b/rootfs","created":"2024-05-01T12:00:00.123456789Z","owner":""}"#;
        let s: State = serde_json::from_str(runc).unwrap();
        assert_eq!(
            (s.status, s.pid, s.annotations.len()),
            (Status::Stopped, 0, 0)
        );
        assert!(serde_json::from_str::<State>(&runc.replace("stopped", "paused")).is_err());
    }
}
