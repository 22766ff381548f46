//! `drainer install DIR`: copies this `drainer` into a directory from which containers of
//! other images can run it — an init container of drainer's image copies it into an
//! `emptyDir` that the application's container mounts, and the application's preStop hook
//! runs `drainer handoff` from there (Argo's `argoexec init` and Tekton's `entrypoint cp` do
//! the same with their own binaries). drainer's image has no shell and no `cp`, hence this.
//!
//! A dynamically linked `drainer` brings its loader and the shared libraries it runs with
//! (those mapped into this process, from `/proc/self/maps`), so it runs in any image,
//! whatever its C library (or none): `DIR/ld.so --library-path DIR DIR/drainer ARGS`.
//! It never writes outside `DIR`, and replaces files there atomically.
//!
//! `drainer install --kubectl-plugin DIR` installs `kubectl drainer` instead: `DIR/kubectl-drainer`,
//! a symbolic link to this binary (kubectl runs the plugins it finds on `PATH` by that name).

use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The loader's name in the directory (as well as its own, e.g. `ld-linux-x86-64.so.2`).
pub(crate) const LOADER: &str = "ld.so";

/// `drainer install`: the copy for other images, or with `--kubectl-plugin` the plugin link.
pub fn run(args: &crate::args::InstallArgs) -> anyhow::Result<()> {
    let exe = std::fs::read_link("/proc/self/exe").context("finding this executable")?;
    if args.kubectl_plugin {
        let link = link_plugin(&exe, &args.dir)?;
        println!(
            "kubectl drainer installed: {} -> {} (put {} on PATH; try `kubectl drainer status`)",
            link.display(),
            exe.display(),
            args.dir.display()
        );
        return Ok(());
    }
    copy_with_libraries(&exe, &args.dir)
}

/// Makes `dir/kubectl-drainer` a symbolic link to `exe`, replacing what was there atomically
/// (a link made under a temporary name, then renamed); the link's path.
pub(crate) fn link_plugin(exe: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(crate::kubectl::PLUGIN_NAME);
    let staging = link.with_extension("drainer-install");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(exe, &staging)
        .with_context(|| format!("linking {} to {}", staging.display(), exe.display()))?;
    std::fs::rename(&staging, &link)
        .with_context(|| format!("renaming into {}", link.display()))?;
    Ok(link)
}

/// Copies `exe` (and its loader and libraries) into `dir`; prints how to run the copy.
fn copy_with_libraries(exe: &Path, dir: &Path) -> anyhow::Result<()> {
    let exe = exe.to_path_buf();
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let libraries = shared_objects(&maps, &exe);
    if libraries
        .iter()
        .any(|l| file_name(l).is_some_and(|n| n == "drainer" || n == LOADER))
    {
        bail!("a shared library is named drainer or {LOADER}; refusing to install");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    copy(&exe, &dir.join("drainer"))?;
    let mut loader = None;
    for library in &libraries {
        let name = file_name(library).context("a mapped library without a file name")?;
        copy(library, &dir.join(name))?;
        if name.starts_with("ld-") {
            // Also under a name that is the same on every architecture, for manifests.
            copy(library, &dir.join(LOADER))?;
            loader = Some(LOADER);
        }
    }
    let dir = dir.display();
    match loader {
        Some(loader) => println!(
            "drainer {} installed in {dir} with {} libraries; run it as: {dir}/{loader} --library-path {dir} {dir}/drainer ARGS",
            env!("CARGO_PKG_VERSION"),
            libraries.len()
        ),
        None => println!(
            "drainer {} installed in {dir}; run it as: {dir}/drainer ARGS",
            env!("CARGO_PKG_VERSION")
        ),
    }
    Ok(())
}

/// The shared objects mapped into the process whose `/proc/self/maps` is `maps`, but `exe`.
fn shared_objects(maps: &str, exe: &Path) -> BTreeSet<PathBuf> {
    maps.lines()
        // address perms offset dev inode pathname (the path may hold spaces)
        .filter_map(|line| line.splitn(6, ' ').nth(5).map(str::trim))
        .filter(|path| path.starts_with('/') && !path.ends_with(" (deleted)"))
        .map(PathBuf::from)
        .filter(|path| path != exe)
        .filter(|path| file_name(path).is_some_and(|n| n.contains(".so")))
        .collect()
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

/// Copies an ELF file to `to` (mode 0755), through a temporary name and a rename.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut magic = [0u8; 4];
    std::fs::File::open(from)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("reading {}", from.display()))?;
    if &magic != b"\x7fELF" {
        bail!("{} is not an ELF file", from.display());
    }
    let staging = to.with_extension("drainer-install");
    std::fs::copy(from, &staging)
        .with_context(|| format!("copying {} to {}", from.display(), staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&staging, to).with_context(|| format!("renaming into {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_a_link_to_this_binary_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let link = link_plugin(Path::new("/opt/old/drainer"), &bin).unwrap();
        assert_eq!(link, bin.join("kubectl-drainer"));
        let link = link_plugin(Path::new("/opt/new/drainer"), &bin).unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/opt/new/drainer")
        );
        let names: Vec<_> = std::fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kubectl-drainer"]);
    }

    #[test]
    fn libraries_come_from_the_maps_but_the_binary_and_anonymous_maps() {
        let maps = "\
5581e0a00000-5581e0b00000 r--p 00000000 fe:01 123 /usr/local/bin/drainer
5581e0b00000-5581e0c00000 r-xp 00100000 fe:01 123 /usr/local/bin/drainer
7f0000000000-7f0000100000 r--p 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000200000 r-xp 00100000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000400000 r--p 00000000 fe:01 789 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f0000500000-7f0000600000 r--p 00000000 fe:01 790 /opt/my libs/libgcc_s.so.1
7f0000600000-7f0000700000 rw-p 00000000 00:00 0 
7f0000700000-7f0000800000 rw-p 00000000 00:00 0                          [heap]
7f0000800000-7f0000900000 r--p 00000000 fe:01 999 /usr/lib/locale/C.utf8/LC_CTYPE
7f0000900000-7f0000a00000 r--p 00000000 fe:01 998 /tmp/libold.so (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        let found = shared_objects(maps, Path::new("/usr/local/bin/drainer"));
        let found: Vec<_> = found.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            found,
            [
                "/opt/my libs/libgcc_s.so.1",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ]
        );
    }
}
