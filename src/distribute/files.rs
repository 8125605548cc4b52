//! Certificate files on disk, as the agent (and the SSH target's far side)
//! keep them: each written atomically, the previous set kept for rollback.
//!
//! A server that reloads at any moment must find either the old file or the
//! new one, never a partial one and never none: each file is written to a
//! temporary file in the same directory, fsynced, given its mode and owner,
//! renamed over the old one (atomic on one file system), and the directory
//! fsynced so the rename survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The suffix of the copy kept for rollback.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// Who owns the written files; `None` leaves the writer's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One file of a set: its name in the directory, contents and mode.
#[derive(Debug, Clone)]
pub struct FileSpec<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Writes `contents` to `dir/name` atomically with `mode` and `owner`.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Owner,
) -> io::Result<()> {
    check_name(name)?;
    let target = dir.join(name);
    // A fresh name, created exclusively: two writers never share it, and a
    // link planted in advance is never followed (O_EXCL).
    let suffix: u64 = rand::random();
    let temporary = dir.join(format!(".{name}.tmp-{suffix:016x}"));
    let written = (|| {
        // Created with the final mode, so a key is never readable by others,
        // not even between create and chmod; mode and owner are then set on
        // the open file, not on a path.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        if owner.uid.is_some() || owner.gid.is_some() {
            std::os::unix::fs::fchown(&file, owner.uid, owner.gid)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// Installs `files` in `dir`: each existing file is first copied to
/// `<name>.previous` (atomically too), then replaced. The previous set is
/// complete before the first file is replaced, so [`roll_back`] always has
/// a whole set to put back. A file that already holds its new contents (a
/// retried install) keeps the backup it has. When a file cannot be
/// replaced, those replaced before it are put back, so the live set is
/// never half new.
pub fn install(dir: &Path, files: &[FileSpec<'_>], owner: Owner) -> io::Result<()> {
    let mut old = Vec::with_capacity(files.len());
    for file in files {
        check_name(file.name)?;
        match fs::read(dir.join(file.name)) {
            Ok(contents) => old.push(Some(contents)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => old.push(None),
            Err(e) => return Err(e),
        }
    }
    for (file, old) in files.iter().zip(&old) {
        if let Some(old) = old.as_deref().filter(|old| *old != file.contents) {
            write_atomically(dir, &previous_name(file.name), old, file.mode, owner)?;
        }
    }
    for (n, file) in files.iter().enumerate() {
        if let Err(e) = write_atomically(dir, file.name, file.contents, file.mode, owner) {
            for (done, old) in files[..n].iter().zip(&old) {
                let _ = match old {
                    Some(old) => write_atomically(dir, done.name, old, done.mode, owner),
                    None => fs::remove_file(dir.join(done.name)),
                };
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Puts back the set [`install`] kept. Errs, changing nothing, when any of
/// the previous files is missing (a first installation has nothing to put
/// back).
pub fn roll_back(dir: &Path, files: &[FileSpec<'_>], owner: Owner) -> io::Result<()> {
    let previous: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| {
            let path = dir.join(previous_name(f.name));
            fs::read(&path).map(|c| (path, c)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("nothing to roll back to: {}: {e}", f.name),
                )
            })
        })
        .collect::<io::Result<_>>()?;
    for (file, (_, contents)) in files.iter().zip(&previous) {
        write_atomically(dir, file.name, contents, file.mode, owner)?;
    }
    Ok(())
}

fn previous_name(name: &str) -> String {
    format!("{name}{PREVIOUS_SUFFIX}")
}

/// A plain file name: configured names never reach outside the directory.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn set<'a>(cert: &'a [u8], key: &'a [u8]) -> [FileSpec<'a>; 2] {
        [
            FileSpec {
                name: "fullchain.pem",
                contents: cert,
                mode: 0o644,
            },
            FileSpec {
                name: "key.pem",
                contents: key,
                mode: 0o600,
            },
        ]
    }

    #[test]
    fn files_get_their_contents_and_mode_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), &set(b"cert 1", b"key 1"), Owner::default()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("fullchain.pem")).unwrap(),
            b"cert 1"
        );
        let key = fs::metadata(dir.path().join("key.pem")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        let cert = fs::metadata(dir.path().join("fullchain.pem")).unwrap();
        assert_eq!(cert.permissions().mode() & 0o777, 0o644);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary or previous file: {names:?}");
    }

    #[test]
    fn the_previous_set_is_kept_and_put_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            roll_back(dir.path(), &set(b"", b""), Owner::default()).is_err(),
            "a first installation has nothing to roll back to"
        );
        install(dir.path(), &set(b"cert 1", b"key 1"), Owner::default()).unwrap();
        install(dir.path(), &set(b"cert 2", b"key 2"), Owner::default()).unwrap();
        assert_eq!(fs::read(dir.path().join("key.pem")).unwrap(), b"key 2");
        assert_eq!(
            fs::read(dir.path().join("key.pem.previous")).unwrap(),
            b"key 1"
        );
        let kept = fs::metadata(dir.path().join("key.pem.previous")).unwrap();
        assert_eq!(
            kept.permissions().mode() & 0o777,
            0o600,
            "the kept key is no more readable"
        );
        roll_back(dir.path(), &set(b"", b""), Owner::default()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("fullchain.pem")).unwrap(),
            b"cert 1"
        );
        assert_eq!(fs::read(dir.path().join("key.pem")).unwrap(), b"key 1");
    }

    #[test]
    fn a_retried_install_keeps_the_backup_of_what_was_there_before() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), &set(b"cert 1", b"key 1"), Owner::default()).unwrap();
        install(dir.path(), &set(b"cert 2", b"key 2"), Owner::default()).unwrap();
        install(dir.path(), &set(b"cert 2", b"key 2"), Owner::default()).unwrap();
        roll_back(dir.path(), &set(b"", b""), Owner::default()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("fullchain.pem")).unwrap(),
            b"cert 1"
        );
        assert_eq!(fs::read(dir.path().join("key.pem")).unwrap(), b"key 1");
    }

    #[test]
    fn a_file_that_cannot_be_replaced_puts_back_those_replaced_before_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("fullchain.pem"), b"cert 1").unwrap();
        // A directory in the key's place: renaming over it fails.
        fs::create_dir_all(dir.path().join("key.pem/in-the-way")).unwrap();
        let e = install(dir.path(), &set(b"cert 2", b"key 2"), Owner::default()).unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(
            fs::read(dir.path().join("fullchain.pem")).unwrap(),
            b"cert 1",
            "never a new certificate beside an old key"
        );
    }

    #[test]
    fn the_owner_is_set_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let me = fs::metadata(dir.path()).unwrap();
        let owner = Owner {
            uid: Some(me.uid()),
            gid: Some(me.gid()),
        };
        write_atomically(dir.path(), "a.pem", b"x", 0o640, owner).unwrap();
        let written = fs::metadata(dir.path().join("a.pem")).unwrap();
        assert_eq!((written.uid(), written.gid()), (me.uid(), me.gid()));
        if me.uid() == 0 {
            // As root (CI), a real change of owner is exercised too.
            let nobody = Owner {
                uid: Some(65534),
                gid: Some(65534),
            };
            write_atomically(dir.path(), "b.pem", b"x", 0o640, nobody).unwrap();
            let b = fs::metadata(dir.path().join("b.pem")).unwrap();
            assert_eq!((b.uid(), b.gid()), (65534, 65534));
        }
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", ".", "..", "../x", "a/b", "a\0b"] {
            let e = write_atomically(dir.path(), name, b"x", 0o600, Owner::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
