//! Sizes in bytes as people write them: one parser for policies (TOML and JSON take a number or a string),
//! the CLI and the examples.

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "size {text:?}: {why}; give a positive whole number of bytes with an optional unit, e.g. 4096, 64K, 512M, 512MiB, 2G"
)]
pub struct SizeError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Reads a size: a positive whole number with an optional unit `K`, `M`, `G` or `T`, each optionally followed
/// by `B` or `iB` (`512M`, `512MB`, `512MiB`, `2g`), all powers of 1024 as for memory limits (docker reads
/// `512m` the same); no unit means bytes (`B` alone too).
///
/// ```
/// use sandkasten::policy::parse_size;
/// assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
/// assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
/// assert_eq!(parse_size("4096").unwrap(), 4096);
/// assert!(parse_size("-1G").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let bad = |why| SizeError {
        text: text.into(),
        why,
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .map(|t| (t, true))
        .unwrap_or((t, false));
    let (t, binary_suffix) = t;
    let t = if binary_suffix {
        t
    } else {
        t.strip_suffix(['B', 'b']).unwrap_or(t)
    };
    let (num, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad("the unit must be K, M, G or T")),
            };
            (&t[..t.len() - 1], shift)
        }
        _ if binary_suffix => return Err(bad("`iB` needs a unit before it")),
        _ => (t, 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a whole number"));
    }
    let n: u64 = num.parse().map_err(|_| bad("too large"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("zero"));
    }
    Ok(bytes)
}

/// Serde for `Option<u64>` sizes: written as a number, read from a number or a string such as `"512MiB"`.
pub(crate) mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Given>::deserialize(d)? {
            None => Ok(None),
            Some(Given::Number(n)) => Ok(Some(n)),
            Some(Given::Text(t)) => super::parse_size(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn units_and_refusals() {
        for (text, want) in [
            ("4096", 4096),
            ("4096B", 4096),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KB", 64 << 10),
            ("512M", 512 << 20),
            ("512MB", 512 << 20),
            ("512MiB", 512 << 20),
            ("2g", 2 << 30),
            (" 1T ", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "0",
            "0M",
            "M",
            "MiB",
            "12Q",
            "-1K",
            "1.5M",
            "99999999999T",
            "1 M",
            "iB",
            "5iB",
            "x",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
