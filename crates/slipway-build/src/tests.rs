use super::*;
use sha2::Digest;
use std::collections::BTreeMap;
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
fn the_procfile_is_read_checked_and_never_followed_through_a_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(pipeline::read_procfile(dir.path()).expect("none").is_none());
    std::fs::write(dir.path().join("Procfile"), "web ./x").expect("write");
    let err = pipeline::read_procfile(dir.path()).expect_err("malformed");
    assert!(err.to_string().contains("line 1"), "{err}");
    std::fs::remove_file(dir.path().join("Procfile")).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("Procfile")).expect("symlink");
    let err = pipeline::read_procfile(dir.path()).expect_err("symlink");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    std::fs::remove_file(dir.path().join("Procfile")).expect("rm");
    tree(dir.path());
    let procfile = pipeline::read_procfile(dir.path())
        .expect("valid")
        .expect("present");
    assert_eq!(procfile.processes["web"], "./run.sh");
    assert_eq!(procfile.processes["worker"], "sleep 100");
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

    // The checksum computed while writing is the file's.
    let bytes = std::fs::read(out.path().join("one.tgz")).expect("read");
    assert_eq!(
        one.checksum,
        format!("SHA256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    );
    assert_eq!(one.size, bytes.len() as u64);

    // A mismatch (checked while unpacking) leaves nothing unpacked behind.
    let other = tempfile::tempdir().expect("tempdir");
    let err =
        unpack_slug(&out.path().join("one.tgz"), "SHA256:00", other.path()).expect_err("mismatch");
    assert!(matches!(err, BuildError::ChecksumMismatch { .. }));
    assert!(!other.path().join("app").exists());
    // So does a slug changed on disk after it was made.
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(out.path().join("changed.tgz"), &changed).expect("write");
    let err = unpack_slug(&out.path().join("changed.tgz"), &one.checksum, other.path())
        .expect_err("changed");
    assert!(matches!(err, BuildError::ChecksumMismatch { .. }), "{err}");
    assert!(!other.path().join("app").exists());
}

/// Every entry under `dir`: relative name -> (kind, mode, content or link target).
fn listing(dir: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            let name = path
                .strip_prefix(dir)
                .expect("inside")
                .display()
                .to_string();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("link");
                ('l', 0, target.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                todo.push(path.clone());
                ('d', mode, Vec::new())
            } else {
                ('f', mode, std::fs::read(&path).expect("read"))
            };
            out.insert(name, entry);
        }
    }
    out
}

#[test]
fn a_build_copied_as_its_slug_equals_the_slug_unpacked() {
    let build = tempfile::tempdir().expect("tempdir");
    tree(build.path());
    std::fs::create_dir(build.path().join(".git")).expect("mkdir");
    std::fs::write(build.path().join(".git/HEAD"), "ref").expect("write");
    std::fs::create_dir(build.path().join("lib/.git")).expect("mkdir");
    std::fs::set_permissions(
        build.path().join("lib/data.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let out = tempfile::tempdir().expect("tempdir");
    let slug = out.path().join("slug.tgz");
    let info = create_slug(build.path(), &slug, &Limits::default()).expect("slug");
    let unpacked = out.path().join("unpacked");
    unpack_slug(&slug, &info.checksum, &unpacked).expect("unpack");
    let copied = out.path().join("copied");
    copy_as_slug(build.path(), &copied).expect("copy");
    let want = listing(&unpacked.join("app"));
    assert!(want.contains_key("lib/link") && want.contains_key("lib/.git"));
    assert!(!want.contains_key(".git"), "{want:?}");
    assert_eq!(listing(&copied), want);
}

#[test]
fn a_build_adopted_in_place_equals_the_slug_unpacked_and_its_cache_links_are_given_back() {
    use std::os::unix::fs::MetadataExt;
    let out = tempfile::tempdir().expect("tempdir");
    let build = out.path().join("build");
    std::fs::create_dir(&build).expect("mkdir");
    tree(&build);
    std::fs::create_dir(build.join(".git")).expect("mkdir");
    std::fs::write(build.join(".git/HEAD"), "ref").expect("write");
    std::fs::set_permissions(
        build.join("lib/data.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    nix::unistd::mkfifo(&build.join("lib/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    xattr::set(build.join("run.sh"), "user.note", b"x").expect("xattr");
    // A cached file (hard-linked from the build cache, as `cp -al` restores a virtualenv) and
    // one hard-linked from somewhere else.
    let cache = out.path().join("cache");
    std::fs::create_dir_all(cache.join("venv")).expect("mkdir");
    std::fs::write(build.join("lib/cached.py"), "cached").expect("write");
    std::fs::set_permissions(
        build.join("lib/cached.py"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    std::fs::hard_link(build.join("lib/cached.py"), cache.join("venv/cached.py")).expect("link");
    // The cache is the build user's; the release's owner is the app user. (Root changes
    // owners; elsewhere both are this process's own ids.)
    let root = nix::unistd::geteuid().is_root();
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let (build_user, app_user) = if root {
        ((4243, 4243), (4242, 4242))
    } else {
        (me, me)
    };
    // `cp -al` links symlinks too (a virtualenv's `bin/python`).
    std::os::unix::fs::symlink("cached.py", build.join("lib/python")).expect("symlink");
    std::fs::hard_link(build.join("lib/python"), cache.join("venv/python")).expect("link");
    for p in [
        cache.clone(),
        cache.join("venv/cached.py"),
        cache.join("venv/python"),
    ] {
        std::os::unix::fs::lchown(&p, Some(build_user.0), Some(build_user.1)).expect("chown");
    }
    std::fs::write(build.join("lib/other.py"), "other").expect("write");
    std::fs::hard_link(build.join("lib/other.py"), out.path().join("other.py")).expect("link");
    std::fs::hard_link(build.join("lib/data.txt"), build.join("lib/data-again.txt"))
        .expect("link within");

    let slug = out.path().join("slug.tgz");
    let info = create_slug(&build, &slug, &Limits::default()).expect("slug");
    let unpacked = out.path().join("unpacked");
    unpack_slug(&slug, &info.checksum, &unpacked).expect("unpack");

    let scratch = out.path().join("scratch");
    std::fs::create_dir(&scratch).expect("mkdir");
    let adopting = prepare_adoption(&build, Some(&cache), &scratch).expect("prepare");
    let shared = adopting.shared().to_vec();
    adopting.complete(Some(app_user)).expect("complete");
    let want = listing(&unpacked.join("app"));
    assert!(want.contains_key("lib/cached.py") && !want.contains_key(".git"));
    assert_eq!(listing(&build), want);
    assert!(xattr::list(build.join("run.sh"))
        .expect("list")
        .next()
        .is_none());

    // The cache's link was taken (listed with what it was, and the cache's own directory,
    // root's until the files are given back); the other one got a copy.
    let cached = cache.join("venv/cached.py");
    let cache_mode = std::fs::symlink_metadata(&cache).expect("meta").mode() & 0o7777;
    assert_eq!(
        shared,
        [
            SharedFile {
                path: cached.clone(),
                uid: build_user.0,
                gid: build_user.1,
                mode: 0o640
            },
            SharedFile {
                path: cache.clone(),
                uid: build_user.0,
                gid: build_user.1,
                mode: cache_mode
            }
        ]
    );
    let uid = |p: &Path| std::fs::symlink_metadata(p).expect("meta").uid();
    if root {
        assert_eq!((uid(&cache), uid(&cached)), (0, app_user.0));
    }
    let ino = |p: &Path| std::fs::symlink_metadata(p).expect("meta").ino();
    assert_eq!(ino(&cached), ino(&build.join("lib/cached.py")));
    // The cache's symlink stays the build user's (the release's is a new one, the app's).
    let cache_link = cache.join("venv/python");
    assert_ne!(ino(&cache_link), ino(&build.join("lib/python")));
    assert_eq!(uid(&cache_link), build_user.0);
    assert_eq!(uid(&build.join("lib/python")), app_user.0);
    assert_eq!(
        std::fs::read_link(build.join("lib/python")).expect("readlink"),
        Path::new("cached.py")
    );
    assert_ne!(
        ino(&out.path().join("other.py")),
        ino(&build.join("lib/other.py"))
    );
    assert_eq!(
        std::fs::read(out.path().join("other.py")).expect("read"),
        b"other"
    );

    unshare(&shared, &scratch).expect("unshare");
    assert_ne!(ino(&cached), ino(&build.join("lib/cached.py")));
    let meta = std::fs::symlink_metadata(&cached).expect("meta");
    assert_eq!((meta.mode() & 0o7777, meta.nlink()), (0o640, 1));
    assert_eq!((uid(&cache), meta.uid()), (build_user.0, build_user.0));
    assert_eq!(uid(&build.join("lib/cached.py")), app_user.0);
    assert_eq!(std::fs::read(&cached).expect("read"), b"cached");
    assert_eq!(std::fs::read_dir(&scratch).expect("list").count(), 0);
}

#[test]
fn giving_a_cache_to_its_user_copies_a_file_a_release_still_shares() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return; // Only root changes owners.
    }
    let out = tempfile::tempdir().expect("tempdir");
    let cache = out.path().join("cache");
    std::fs::create_dir_all(cache.join("venv")).expect("mkdir");
    let release_file = out.path().join("release.py");
    std::fs::write(&release_file, "code").expect("write");
    std::os::unix::fs::lchown(&release_file, Some(4242), Some(4242)).expect("chown");
    std::fs::hard_link(&release_file, cache.join("venv/code.py")).expect("link");
    std::fs::write(cache.join("own.txt"), "own").expect("write");
    // Half a copy a stopped server was writing beside its file.
    std::fs::write(cache.join("venv/.slipway-copy-99-1"), "co").expect("write");
    pipeline::chown_tree(&cache, (4243, 4243)).expect("chown tree");
    assert!(!cache.join("venv/.slipway-copy-99-1").exists());
    let meta = |p: &Path| std::fs::symlink_metadata(p).expect("meta");
    let cached = meta(&cache.join("venv/code.py"));
    assert_eq!((cached.uid(), cached.nlink()), (4243, 1));
    assert_eq!(
        std::fs::read(cache.join("venv/code.py")).expect("read"),
        b"code"
    );
    let released = meta(&release_file);
    assert_eq!((released.uid(), released.nlink()), (4242, 1));
    assert_eq!(meta(&cache.join("own.txt")).uid(), 4243);
}

#[test]
fn an_export_file_changes_the_environment_except_what_the_pipeline_owns() {
    let before: BTreeMap<String, String> = [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/scratch/home"),
        ("STACK", "slipway-24"),
        ("LANG", "C.UTF-8"),
        ("SOURCE_VERSION", "abc"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env0 = b"PATH=/build/bin:/usr/bin:/bin\0HOME=/elsewhere\0STACK=other\0GREETING=a=b\0PWD=/build\0SHLVL=1\0_=/usr/bin/env\0\xff=bad\0";
    let after = pipeline::merge_export(&before, env0);
    let expect: BTreeMap<String, String> = [
        ("PATH", "/build/bin:/usr/bin:/bin"),
        ("HOME", "/scratch/home"),
        ("STACK", "slipway-24"),
        ("SOURCE_VERSION", "abc"),
        ("GREETING", "a=b"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // LANG was unset by the export; the shell's own PWD, SHLVL and _ are not taken.
    assert_eq!(after, expect);
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
    let err = extract_source(&evil[..], &dest, &Limits::default()).expect_err("escape");
    assert!(matches!(err, BuildError::UnsafePath(_)), "{err:?}");
    assert!(!root.path().join("escaped").exists());

    // An absolute name lands inside the directory.
    let abs = tar_with(&[("/tmp/slipway-escape-test", b"x")]);
    extract_source(&abs[..], &dest, &Limits::default()).expect("extracted inside");
    assert!(dest.join("tmp/slipway-escape-test").is_file());
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

/// A tar header block of `kind` declaring `size` bytes, with a valid checksum.
fn raw_header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::new(kind));
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    *h.as_bytes()
}

#[test]
fn oversized_long_name_and_pax_headers_fail_before_they_are_buffered() {
    let dest = tempfile::tempdir().expect("tempdir");
    for (kind, what) in [
        (b'L', "GNU long name"),
        (b'K', "GNU long link name"),
        (b'x', "PAX extended header"),
    ] {
        // A 64 MiB metadata entry whose data never comes: the tar crate would try to read it all
        // (and fail with an unexpected end of file); the guard refuses it from the header alone.
        let declared = 64 * 1024 * 1024;
        let tarball = raw_header("././@LongLink", kind, declared);
        let err =
            extract_source(&tarball[..], dest.path(), &Limits::default()).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(what) && text.contains(&declared.to_string()),
            "{text}"
        );
    }

    // Within the bound, long names still work, and a PAX size is followed.
    let long = format!("{}/file.txt", "d".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b"hello"[..]).expect("append");
    b.append_pax_extensions([("comment", &b"pax is fine"[..])])
        .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "after-pax", &b"ok"[..])
        .expect("append");
    let tarball = b.into_inner().expect("finish");
    extract_source(&tarball[..], dest.path(), &Limits::default()).expect("extract");
    assert_eq!(
        std::fs::read_to_string(dest.path().join(&long)).expect("read"),
        "hello"
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("after-pax")).expect("read"),
        "ok"
    );
}

#[test]
fn write_failures_are_reported_as_what_they_are_and_escapes_as_escapes() {
    let root = tempfile::tempdir().expect("tempdir");
    let dest = root.path().join("build");
    std::fs::create_dir(&dest).expect("mkdir");
    // A file where the tarball needs a directory: writing fails (we run as root, so permissions
    // cannot make it fail).
    std::fs::write(dest.join("lib"), "a file").expect("write");
    let tarball = tar_with(&[("lib/inner.txt", b"x")]);
    let err = extract_source(&tarball[..], &dest, &Limits::default()).expect_err("fails");
    match &err {
        BuildError::Io { path, source, .. } => {
            assert_eq!(path, &dest.join("lib/inner.txt"));
            assert!(!source.to_string().is_empty());
        }
        other => panic!("expected an I/O error naming the path, got {other:?}"),
    }
    assert!(!err.to_string().contains("outside"), "{err}");

    // A symlink in the tarball, then a file through it: an escape.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "out", root.path()).expect("link");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.as_old_mut().name[..9].copy_from_slice(b"out/owned");
    h.set_cksum();
    b.append(&h, &b"x"[..]).expect("append");
    let tarball = b.into_inner().expect("finish");
    let err = extract_source(&tarball[..], &dest, &Limits::default()).expect_err("escape");
    assert!(matches!(err, BuildError::UnsafePath(_)), "{err:?}");
    assert!(!root.path().join("owned").exists());

    let evil = tar_with(&[("../escaped", b"x")]);
    let err = extract_source(&evil[..], &dest, &Limits::default()).expect_err("escape");
    assert!(matches!(err, BuildError::UnsafePath(_)), "{err:?}");
}

/// A raw tar entry: name, type flag, data, link target.
type RawEntry<'a> = (&'a str, u8, &'a [u8], &'a str);

/// A gzipped tar of raw entries, as a tampered or foreign slug could be, and its checksum.
fn raw_slug(dir: &Path, entries: &[RawEntry<'_>]) -> (PathBuf, String) {
    let mut tarball = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = raw_header(name, *kind, data.len() as u64);
        if !link.is_empty() {
            let mut header = tar::Header::from_byte_slice(&h).clone();
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            h.copy_from_slice(header.as_bytes());
        }
        tarball.extend_from_slice(&h);
        tarball.extend_from_slice(data);
        tarball.resize(tarball.len().div_ceil(512) * 512, 0);
    }
    tarball.resize(tarball.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tarball).expect("gzip");
    let bytes = gz.finish().expect("gzip");
    let path = dir.join("raw.tgz");
    std::fs::write(&path, &bytes).expect("write");
    let sum = format!("SHA256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    (path, sum)
}

#[test]
fn unpacking_a_slug_never_writes_outside_or_through_a_symlink() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().display().to_string();
    let cases: Vec<(&str, Vec<RawEntry<'_>>)> = vec![
        (
            "a name with ..",
            vec![("app/../../escaped", b'0', b"x", "")],
        ),
        ("an absolute name", vec![("/escaped", b'0', b"x", "")]),
        (
            "a file through a symlink the slug made",
            vec![
                ("app/", b'5', b"", ""),
                ("app/link", b'2', b"", &target),
                ("app/link/escaped", b'0', b"x", ""),
            ],
        ),
        (
            "a directory over a symlink the slug made",
            vec![
                ("app/link", b'2', b"", &target),
                ("app/link/", b'5', b"", ""),
            ],
        ),
        (
            "a file over a symlink the slug made",
            vec![
                ("app/link", b'2', b"", &target),
                ("app/link", b'0', b"x", ""),
            ],
        ),
        ("a hard link", vec![("app/hard", b'1', b"", "/etc/passwd")]),
    ];
    for (what, entries) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (slug, sum) = raw_slug(dir.path(), &entries);
        let dest = dir.path().join("dyno");
        let err = unpack_slug(&slug, &sum, &dest).expect_err(what);
        assert!(
            matches!(err, BuildError::UnsafePath(_) | BuildError::Io { .. }),
            "{what}: {err:?}"
        );
        assert!(!dest.join("app").exists(), "{what}: left behind");
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            0,
            "{what}: wrote outside"
        );
        assert!(!dir.path().join("escaped").exists(), "{what}");
    }

    // What slugs hold: directories, files with their mode, symlinks inside.
    let dir = tempfile::tempdir().expect("tempdir");
    let (slug, sum) = raw_slug(
        dir.path(),
        &[
            ("app/", b'5', b"", ""),
            ("app/bin/run", b'0', b"#!/bin/sh\n", ""),
            ("app/data", b'0', b"data", ""),
            ("app/link", b'2', b"", "data"),
        ],
    );
    let dest = dir.path().join("dyno");
    unpack_slug(&slug, &sum, &dest).expect("unpack");
    assert_eq!(
        std::fs::read_to_string(dest.join("app/link")).expect("read"),
        "data"
    );
    let mode = std::fs::metadata(dest.join("app/data"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}
