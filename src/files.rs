//! Files the server opens for writing (the log, the archive, the SQLite store) and
//! the checks on what it runs and trusts (programs, the CA file, the config's folder):
//! nothing is opened through a symbolic link, and nothing another user can change is
//! trusted.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Open `path` for appending, creating it with `mode`; never through a symbolic link
/// (the last component), and only a regular file that other users cannot write (or a
/// character device, like `/dev/null`), in a folder they cannot replace it in.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    if let Some(why) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(folder_open_to_others)
    {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link: give the file itself (links are not followed)",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    // A device (/dev/null, /dev/stderr) holds nothing anyone could change.
    if std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
        return Ok(file);
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    if let Some(why) = writable_by_others(&meta) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    Ok(file)
}

/// Why other users could change a file with this metadata (`None`: they cannot): it is
/// writable by every user.
pub fn writable_by_others(meta: &Metadata) -> Option<String> {
    let mode = meta.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "is writable by every user (mode {:o}): chmod o-w it",
            mode & 0o777
        )
    })
}

/// Why other users could replace what is in the folder `dir` (`None`: they cannot): it
/// is writable by every user and not sticky (in a sticky folder like /tmp, only a
/// file's owner can rename or remove it).
pub fn folder_open_to_others(dir: &Path) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.permissions().mode();
    (mode & 0o002 != 0 && mode & 0o1000 == 0).then(|| {
        format!(
            "its folder {} is writable by every user (mode {:o}) and not sticky: anyone could replace it; chmod o-w the folder",
            dir.display(),
            mode & 0o7777
        )
    })
}

/// Why a program (or a file it trusts, like the API's CA file) must not be used: it,
/// or its folder, can be changed by a user other than root, the user the server runs
/// as, or `also` (the config file's owner).
pub fn untrusted(path: &Path, runs_as: u32, also: Option<u32>) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if let Some(why) = writable_by_others(&meta) {
        return Some(why);
    }
    let owner = meta.uid();
    if owner != 0 && owner != runs_as && Some(owner) != also {
        return Some(format!(
            "belongs to uid {owner}, who could change what it does: chown it to root (or to the user the server runs as)"
        ));
    }
    if meta.permissions().mode() & 0o020 != 0 && meta.gid() != 0 {
        let group = meta.gid();
        let ours = nix::unistd::getgroups()
            .map(|gs| gs.iter().any(|g| g.as_raw() == group))
            .unwrap_or(false)
            || nix::unistd::getegid().as_raw() == group;
        if !ours {
            return Some(format!(
                "is writable by its group (gid {group}), whose members could change what it does: chmod g-w it"
            ));
        }
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    folder_open_to_others(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("wechat-fcgi-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn appended_files_are_never_opened_through_a_link_nor_left_open_to_others() {
        let d = dir("append");
        let target = d.join("target");
        std::fs::write(&target, b"root's").unwrap();
        let link = d.join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_append(&link, 0o640).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"root's");
        let open = d.join("open");
        std::fs::write(&open, b"").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = open_append(&open, 0o640).unwrap_err();
        assert!(e.to_string().contains("writable by every user"), "{e}");
        let fresh = open_append(&d.join("new"), 0o640).unwrap();
        assert_eq!(
            fresh.metadata().unwrap().permissions().mode() & 0o777,
            0o640
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn folders_open_to_everyone_are_refused_unless_sticky() {
        let d = dir("folder");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(folder_open_to_others(&d).is_some());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(folder_open_to_others(&d).is_none(), "sticky, like /tmp");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(folder_open_to_others(&d).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
