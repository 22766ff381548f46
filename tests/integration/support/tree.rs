//! Awkward source trees, and an exact comparison of two trees (content and metadata).

use filetime::FileTime;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        path,
        FileTime::from_unix_time(secs, nanos),
        FileTime::from_unix_time(secs, nanos),
    )
    .unwrap_or_else(|e| panic!("mtime {}: {e}", path.display()));
}

/// Builds an awkward tree under `root` (created): every kind of entry and name
/// that must round-trip, plus special files that must be listed as skipped. `big` is the size
/// of one file large enough to need a multipart upload.
pub fn awkward(root: &Path, big: usize) -> PathBuf {
    fs::create_dir_all(root).unwrap();
    let r = |p: &str| root.join(p);
    write(&r("plain.txt"), b"hello\n");
    write(&r("empty"), b"");
    write(&r("big.bin"), &bytes(1, big));
    fs::create_dir_all(r("nested/deeper/deepest")).unwrap();
    write(&r("nested/deeper/deepest/leaf"), &bytes(2, 5000));
    fs::create_dir(r("empty-dir")).unwrap();
    write(&r("with space.txt"), b"space");
    write(&r("new\nline"), b"newline");
    write(&r("日本語のファイル名.txt"), "こんにちは".as_bytes());
    write(&r("émoji 🎉.md"), b"party");
    write(&r("odd %25 #hash ~tilde \\back [x].txt"), b"odd");
    write(&r("-leading-dash"), b"dash");
    write(&r("..."), b"dots");
    write(&root.join("a".repeat(255)), b"long ascii name");
    write(&root.join("é".repeat(127) + "x"), b"long multibyte name");
    write(
        &root.join(OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"raw bytes name",
    );
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xc3"))).unwrap();
    write(
        &root.join(OsStr::from_bytes(b"dir-\xc3/inside")),
        b"inside a raw dir",
    );
    // Symlinks: relative, absolute, dangling, looping, to a directory.
    symlink("plain.txt", r("link-relative")).unwrap();
    symlink("/etc/hostname", r("link-absolute")).unwrap();
    symlink("does/not/exist", r("link-dangling")).unwrap();
    symlink("loop-b", r("loop-a")).unwrap();
    symlink("loop-a", r("loop-b")).unwrap();
    symlink("nested", r("link-to-dir")).unwrap();
    symlink(OsStr::from_bytes(b"target-\xff"), r("link-raw-target")).unwrap();
    // Hard links.
    write(&r("hard-1"), b"hard linked content");
    fs::hard_link(r("hard-1"), r("hard-2")).unwrap();
    // Modes.
    write(&r("read-only.txt"), b"ro");
    fs::set_permissions(r("read-only.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    write(&r("setuid-exec"), b"#!/bin/sh\n");
    fs::set_permissions(r("setuid-exec"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(r("setgid-dir")).unwrap();
    write(&r("setgid-dir/f"), b"g");
    fs::set_permissions(r("setgid-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir(r("sticky")).unwrap();
    fs::set_permissions(r("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(r("read-only-dir")).unwrap();
    write(&r("read-only-dir/inside"), b"in a read-only dir");
    // Owners, when we may set them.
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(r("plain.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(r("nested"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(r("link-relative"), Some(1111), Some(2222)).unwrap();
    }
    // Special files, which must be listed as skipped.
    let fifo = std::process::Command::new("mkfifo")
        .arg(r("fifo"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let _socket = std::os::unix::net::UnixListener::bind(r("socket")).unwrap();
    // Nanosecond mtimes on files and directories (directories last, children first).
    set_mtime(&r("plain.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&r("big.bin"), 1_500_000_000, 1);
    set_mtime(&r("link-relative"), 1_400_000_000, 999_999_999);
    set_mtime(&r("nested/deeper/deepest"), 1_300_000_000, 42);
    set_mtime(&r("nested/deeper"), 1_300_000_001, 43);
    set_mtime(&r("nested"), 1_300_000_002, 44);
    set_mtime(&r("empty-dir"), 1_200_000_000, 500);
    fs::set_permissions(r("read-only-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    set_mtime(&r("read-only-dir"), 1_100_000_000, 7);
    root.to_owned()
}

/// Lists every difference between the trees `a` and `b` that a restore must not have:
/// kinds, content, symlink targets, mode, owner (when root), size and mtime. Special files in
/// `a` must be absent from `b`.
pub fn differences(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let paths_a = relative_paths(a);
    let paths_b = relative_paths(b);
    for rel in &paths_a {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let ma = fs::symlink_metadata(&pa).unwrap();
        let ft = ma.file_type();
        use std::os::unix::fs::FileTypeExt;
        let special = ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device();
        let Ok(mb) = fs::symlink_metadata(&pb) else {
            if !special {
                diffs.push(format!("{rel:?}: missing"));
            }
            continue;
        };
        if special {
            diffs.push(format!("{rel:?}: special file was restored"));
            continue;
        }
        compare_entry(rel, &pa, &pb, &ma, &mb, &mut diffs);
    }
    for rel in paths_b.iter().filter(|p| !paths_a.contains(p)) {
        diffs.push(format!("{rel:?}: extra"));
    }
    diffs
}

fn compare_entry(
    rel: &Path,
    pa: &Path,
    pb: &Path,
    ma: &fs::Metadata,
    mb: &fs::Metadata,
    diffs: &mut Vec<String>,
) {
    if ma.file_type() != mb.file_type() {
        diffs.push(format!("{rel:?}: type differs"));
        return;
    }
    let is_link = ma.file_type().is_symlink();
    if !is_link && ma.mode() != mb.mode() {
        diffs.push(format!("{rel:?}: mode {:o} vs {:o}", ma.mode(), mb.mode()));
    }
    if rustix::process::geteuid().is_root() && (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        diffs.push(format!(
            "{rel:?}: owner {}:{} vs {}:{}",
            ma.uid(),
            ma.gid(),
            mb.uid(),
            mb.gid()
        ));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        diffs.push(format!(
            "{rel:?}: mtime {}.{} vs {}.{}",
            ma.mtime(),
            ma.mtime_nsec(),
            mb.mtime(),
            mb.mtime_nsec()
        ));
    }
    if is_link {
        if fs::read_link(pa).unwrap() != fs::read_link(pb).unwrap() {
            diffs.push(format!("{rel:?}: link target differs"));
        }
    } else if ma.is_file() && fs::read(pa).unwrap() != fs::read(pb).unwrap() {
        diffs.push(format!("{rel:?}: content differs"));
    }
}

/// Every path under `root`, relative, the root itself included as "".
pub fn relative_paths(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(root).unwrap().to_owned())
        .collect()
}
