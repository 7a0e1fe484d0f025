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

#[test]
fn publish_parses_docker_style() {
    assert_eq!(
        "8080:80".parse::<Publish>().unwrap(),
        Publish::tcp(8080, 80)
    );
    assert_eq!(
        "8080:80/tcp".parse::<Publish>().unwrap(),
        Publish::tcp(8080, 80)
    );
    assert_eq!(
        "5353:53/udp".parse::<Publish>().unwrap(),
        Publish::udp(5353, 53)
    );
    assert_eq!(Publish::udp(5353, 53).to_string(), "5353:53/udp");
    for bad in [
        "80",
        "0:80",
        "80:0",
        "65536:80",
        "x:80",
        "80:80/sctp",
        "80:80/",
        ":80",
        "80:",
        "-1:80",
        "1:2:3",
        "",
    ] {
        let err = bad.parse::<Publish>().unwrap_err();
        assert!(
            matches!(err, PolicyError::BadPublish { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("HOSTPORT:PORT"), "{err}");
    }
}

#[test]
fn publish_is_validated_and_in_toml() {
    let user = || Policy::default().network(Network::User);
    assert!(
        user()
            .publish(Publish::tcp(8080, 80))
            .publish(Publish::udp(8080, 80))
            .publish(Publish::tcp(8081, 80))
            .validate()
            .is_ok()
    );
    assert!(matches!(
        user()
            .publish(Publish::tcp(8080, 80))
            .publish(Publish::tcp(8080, 81))
            .validate(),
        Err(PolicyError::DuplicatePublish {
            host_port: 8080,
            protocol: Protocol::Tcp
        })
    ));
    assert!(matches!(
        user().publish(Publish::tcp(0, 80)).validate(),
        Err(PolicyError::BadPublish { .. })
    ));
    for network in [Network::None, Network::Host] {
        let err = Policy::default()
            .network(network)
            .publish(Publish::tcp(8080, 80))
            .validate()
            .unwrap_err();
        assert!(matches!(err, PolicyError::PublishNeedsUserNetwork), "{err}");
        assert!(err.to_string().contains("--net user"), "{err}");
    }
    let p = Policy::from_toml_str(
        r#"
        network = "user"
        [[publish]]
        host_port = 8080
        port = 80
        [[publish]]
        host_port = 5353
        port = 53
        protocol = "udp"
        "#,
    )
    .unwrap();
    assert_eq!(p.network, Network::User);
    assert_eq!(p.publish, [Publish::tcp(8080, 80), Publish::udp(5353, 53)]);
    assert_eq!(Policy::from_toml_str(&p.to_toml()).unwrap(), p);
    assert!(!Policy::default().to_toml().contains("publish"));
    assert!(
        Policy::from_toml_str("[[publish]]\nhost_port = 1\nport = 2\nproto = \"tcp\"").is_err()
    );
    assert!(Policy::from_toml_str("[[publish]]\nhost_port = 70000\nport = 2").is_err());
}

#[test]
fn a_root_of_its_own_in_toml_and_its_mistakes() {
    let p = Policy::from_toml_str(
        r#"
        [rootfs]
        image = "app:1.0"
        store = "/srv/images"
        upper = "/srv/state"
        user = "app:staff"
        "#,
    )
    .unwrap();
    let root = p.rootfs.clone().unwrap();
    assert_eq!(root.image.as_deref(), Some("app:1.0"));
    assert_eq!(root.store.as_deref(), Some(Path::new("/srv/images")));
    assert_eq!(root.upper.as_deref(), Some(Path::new("/srv/state")));
    assert_eq!(root.user.as_deref(), Some("app:staff"));
    assert!(p.validate().is_ok());
    assert_eq!(Policy::from_toml_str(&p.to_toml()).unwrap(), p);
    let ro = Policy::default().rootfs(Rootfs {
        read_only: true,
        ..Rootfs::dir("/srv/root")
    });
    assert!(ro.to_toml().contains("read_only = true"));
    assert_eq!(Policy::from_toml_str(&ro.to_toml()).unwrap(), ro);

    let bad = |r: Rootfs, why: &str| {
        let e = Policy::default()
            .rootfs(r)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
    };
    bad(Rootfs::default(), "give `dir` or `image`");
    bad(
        Rootfs {
            image: Some("x".into()),
            ..Rootfs::dir("/r")
        },
        "not both",
    );
    bad(Rootfs::dir("relative"), "absolute");
    bad(Rootfs::dir("/r").store("/s"), "`store` goes with `image`");
    bad(Rootfs::image("x").upper("rel"), "absolute");
    bad(
        Rootfs {
            read_only: true,
            ..Rootfs::image("x").upper("/u")
        },
        "`read_only`",
    );
    assert!(
        Policy::from_toml_str("[rootfs]\nimage = \"x\"\nlayers = 3\n").is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn masked_and_read_only_paths_load_and_are_checked() {
    let p = Policy::from_toml_str(
        "masked_paths = [\"/etc/machine-id\", \"/proc/acpi\"]\nreadonly_paths = [\"/srv\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.masked_paths,
        [
            PathBuf::from("/etc/machine-id"),
            PathBuf::from("/proc/acpi")
        ]
    );
    assert_eq!(p.readonly_paths, [PathBuf::from("/srv")]);
    p.validate().unwrap();
    for bad in ["relative", "/", "/a/../etc", ""] {
        let e = Policy::default().mask(bad).validate().unwrap_err();
        assert!(matches!(e, PolicyError::BadDestination(_)), "{bad}: {e}");
        let e = Policy::default()
            .read_only_path(bad)
            .validate()
            .unwrap_err();
        assert!(matches!(e, PolicyError::BadDestination(_)), "{bad}: {e}");
    }
    let many = (0..=MAX_PATHS).fold(Policy::default(), |p, i| p.mask(format!("/m{i}")));
    assert!(
        many.validate()
            .unwrap_err()
            .to_string()
            .contains("at most 256 masked paths")
    );
}

#[test]
fn sizes_in_policies_are_numbers_or_text() {
    let p = Policy::from_toml_str(
        "[limits]\nmemory = \"512MiB\"\nfsize = 4096\n\n[[mount]]\ntype = \"tmpfs\"\ndst = \"/scratch\"\nsize = \"1M\"\n",
    )
    .unwrap();
    assert_eq!(p.limits.memory, Some(512 << 20));
    assert_eq!(p.limits.fsize, Some(4096));
    assert_eq!(
        p.mounts,
        [Mount::Tmpfs {
            dst: "/scratch".into(),
            size: Some(1 << 20)
        }]
    );
    // Written back as numbers, read again the same.
    assert_eq!(Policy::from_toml_str(&p.to_toml()).unwrap(), p);
    let e = Policy::from_toml_str("[limits]\nmemory = \"lots\"\n").unwrap_err();
    assert!(e.contains("lots"), "{e}");
}
