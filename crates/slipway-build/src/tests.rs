use super::*;
use std::os::unix::fs::PermissionsExt;

fn tree(dir: &Path) {
    std::fs::write(dir.join("Procfile"), "web: ./run.sh\nworker: sleep 100\n").expect("write");
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::create_dir(dir.join("lib")).expect("mkdir");
    std::fs::write(dir.join("lib/data.txt"), "data").expect("write");
    std::os::unix::fs::symlink("data.txt", dir.join("lib/link")).expect("symlink");
}

#[test]
fn compile_reads_the_procfile_or_explains_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut said = Vec::new();
    assert!(matches!(
        compile(dir.path(), &mut |l| said.push(l.to_string())),
        Err(BuildError::NoProcfile)
    ));
    std::fs::write(dir.path().join("Procfile"), "web ./x").expect("write");
    let err = compile(dir.path(), &mut |_| {}).expect_err("malformed");
    assert!(err.to_string().contains("line 1"), "{err}");
    std::fs::remove_file(dir.path().join("Procfile")).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("Procfile")).expect("symlink");
    let err = compile(dir.path(), &mut |_| {}).expect_err("symlink");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    std::fs::remove_file(dir.path().join("Procfile")).expect("rm");
    tree(dir.path());
    let procfile = compile(dir.path(), &mut |l| said.push(l.to_string())).expect("valid");
    assert_eq!(procfile.processes["web"], "./run.sh");
    assert_eq!(said, ["Procfile declares types -> web, worker"]);
}

#[test]
fn slugs_are_deterministic_and_round_trip() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    tree(a.path());
    tree(b.path());
    // Different mtimes and umask bits must not change the checksum.
    std::fs::set_permissions(
        b.path().join("lib/data.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let out = tempfile::tempdir().expect("tempdir");
    let limits = Limits::default();
    let one = create_slug(a.path(), &out.path().join("one.tgz"), &limits).expect("slug");
    let two = create_slug(b.path(), &out.path().join("two.tgz"), &limits).expect("slug");
    assert_eq!(one, two);
    assert!(one.checksum.starts_with("SHA256:") && one.checksum.len() == 7 + 64);

    let dyno = tempfile::tempdir().expect("tempdir");
    unpack_slug(&out.path().join("one.tgz"), &one.checksum, dyno.path()).expect("unpack");
    let app = dyno.path().join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("lib/link")).expect("read"),
        "data"
    );
    let mode = std::fs::metadata(app.join("run.sh"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executables stay executable");

    let err =
        unpack_slug(&out.path().join("one.tgz"), "SHA256:00", dyno.path()).expect_err("mismatch");
    assert!(matches!(err, BuildError::ChecksumMismatch { .. }));
}

#[test]
fn slug_size_is_bounded() {
    let a = tempfile::tempdir().expect("tempdir");
    tree(a.path());
    let out = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_slug_bytes: 10,
        ..Limits::default()
    };
    let err = create_slug(a.path(), &out.path().join("s.tgz"), &limits).expect_err("too large");
    assert!(matches!(err, BuildError::SlugTooLarge { .. }));
    assert!(!out.path().join("s.tgz").exists() && !out.path().join("s.partial").exists());
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so hostile paths reach the extractor unchanged.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("finish")
}

#[test]
fn extraction_never_leaves_its_directory_and_is_bounded() {
    let root = tempfile::tempdir().expect("tempdir");
    let dest = root.path().join("build");
    std::fs::create_dir(&dest).expect("mkdir");
    let evil = tar_with(&[("../escaped", b"x")]);
    let _ = extract_source(&evil[..], &dest, &Limits::default());
    assert!(!root.path().join("escaped").exists());

    let abs = tar_with(&[("/tmp/slipway-escape-test", b"x")]);
    let _ = extract_source(&abs[..], &dest, &Limits::default());
    assert!(!Path::new("/tmp/slipway-escape-test").exists());

    let big = tar_with(&[("a", &[0u8; 100]), ("b", &[0u8; 100])]);
    let limits = Limits {
        max_source_bytes: 150,
        ..Limits::default()
    };
    assert!(matches!(
        extract_source(&big[..], &dest, &limits),
        Err(BuildError::SourceTooLarge { .. })
    ));
    let limits = Limits {
        max_source_entries: 1,
        ..Limits::default()
    };
    assert!(matches!(
        extract_source(&big[..], &dest, &limits),
        Err(BuildError::TooManyEntries { .. })
    ));

    let ok = tar_with(&[("Procfile", b"web: x")]);
    extract_source(&ok[..], &dest, &Limits::default()).expect("extract");
    assert_eq!(
        std::fs::read_to_string(dest.join("Procfile")).expect("read"),
        "web: x"
    );
}
