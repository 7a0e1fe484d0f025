//! Tests of the policy description: TOML round trips, validation, builders.
use super::*;

#[test]
fn toml_round_trip() {
    let p = Policy::default()
        .ro_bind("/opt", "/opt")
        .bind("/srv/data", "/data")
        .tmpfs_sized("/work", 1 << 20)
        .hostname("judge")
        .timeout(Duration::from_millis(2500));
    let text = p.to_toml();
    assert_eq!(Policy::from_toml_str(&text).unwrap(), p);
}

#[test]
fn toml_file_form() {
    let p = Policy::from_toml_str(
        r#"
        hostname = "box"
        network = "host"
        timeout_secs = 1.5
        [[mount]]
        type = "ro_bind"
        src = "/usr"
        dst = "/usr"
        [[mount]]
        type = "tmpfs"
        dst = "/scratch"
        size = 4096
        "#,
    )
    .unwrap();
    assert_eq!(p.hostname, "box");
    assert_eq!(p.network, Network::Host);
    assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(p.mounts.len(), 2);
    assert!(p.system);
}

#[test]
fn unknown_fields_are_rejected() {
    let err = Policy::from_toml_str("hostnme = \"x\"").unwrap_err();
    assert!(err.contains("hostnme"), "{err}");
    assert!(Policy::from_toml_str("timeout_secs = -1").is_err());
    assert!(Policy::from_toml_str("[[mount]]\ntype = \"nfs\"\ndst = \"/x\"").is_err());
}

#[test]
fn validation() {
    assert!(Policy::default().validate().is_ok());
    for dst in ["relative", "/", "/a/../b", "", "//"] {
        let err = Policy::default().tmpfs(dst).validate().unwrap_err();
        assert!(
            matches!(err, PolicyError::BadDestination(_)),
            "{dst}: {err}"
        );
    }
    assert!(matches!(
        Policy::default().ro_bind("usr", "/usr").validate(),
        Err(PolicyError::RelativeSource(_))
    ));
    assert!(matches!(
        Policy::default().hostname("a b").validate(),
        Err(PolicyError::BadHostname(_))
    ));
    assert!(matches!(
        Policy::default().hostname("x".repeat(65)).validate(),
        Err(PolicyError::BadHostname(_))
    ));
    assert!(matches!(
        Policy::default().tmpfs_sized("/t", 0).validate(),
        Err(PolicyError::ZeroTmpfsSize(_))
    ));
    assert!(matches!(
        Policy::default().timeout(Duration::ZERO).validate(),
        Err(PolicyError::BadTimeout)
    ));
}
