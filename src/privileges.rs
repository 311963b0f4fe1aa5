//! Running as an unprivileged user: bind first (a port below 1024, a socket in /run),
//! then give up root before serving, so requests and reply programs never run as root.

use nix::unistd::{Gid, Group, Uid, User};

/// The user and group to switch to (`[server] user`, `group`), resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name, for messages.
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// The group's gid: `group`, or the user's primary group.
    pub gid: u32,
}

impl RunAs {
    /// Look up `user` (and `group`, else the user's primary group) in the system's
    /// user database.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<RunAs, String> {
        let found = User::from_name(user)
            .map_err(|e| format!("looking up user {user:?}: {e}"))?
            .ok_or_else(|| format!("no user {user:?} on this system"))?;
        let gid = match group {
            None => found.gid,
            Some(name) => {
                Group::from_name(name)
                    .map_err(|e| format!("looking up group {name:?}: {e}"))?
                    .ok_or_else(|| format!("no group {name:?} on this system"))?
                    .gid
            }
        };
        Ok(RunAs {
            user: user.to_owned(),
            uid: found.uid.as_raw(),
            gid: gid.as_raw(),
        })
    }
}

/// Give the Unix socket we created to `owner` and `group` (PHP-FPM's `listen.owner`,
/// `listen.group`), so that the web server's user can connect. Nothing to do when both
/// are unset.
pub fn chown_socket(
    path: &std::path::Path,
    owner: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<()> {
    if owner.is_none() && group.is_none() {
        return Ok(());
    }
    let uid = match owner {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| anyhow::anyhow!("server.socket_owner {name:?}: {e}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("server.socket_owner: no user {name:?} on this system")
                })?
                .uid,
        ),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|e| anyhow::anyhow!("server.socket_group {name:?}: {e}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("server.socket_group: no group {name:?} on this system")
                })?
                .gid,
        ),
        None => None,
    };
    // Never through a path someone could have swapped for a link to another file:
    // the socket must still be a socket, its owner changed without following a link,
    // and the same file afterwards.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let identity = |what: &str| -> anyhow::Result<(u64, u64)> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} is no longer the socket this process bound ({what}): someone who can write to its folder replaced it; nothing was changed",
                path.display()
            );
        }
        Ok((meta.dev(), meta.ino()))
    };
    let before = identity("before setting its owner")?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        uid,
        gid,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| anyhow::anyhow!("chown {} (socket_owner/socket_group): {e}", path.display()))?;
    if identity("after setting its owner")? != before {
        anyhow::bail!(
            "{} was replaced while its owner was set: someone can write to its folder",
            path.display()
        );
    }
    Ok(())
}

/// Say at start when the web server probably cannot connect to the socket: it is
/// root's, no `socket_group`/`socket_owner` gives it away, and the mode admits no one
/// else (nginx then answers 502 with nothing in this log).
pub fn warn_if_unreachable(path: &std::path::Path, server: &crate::config::ServerConfig) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let others = server.socket_mode & 0o007 != 0;
    if meta.uid() == 0 && meta.gid() == 0 && !others {
        tracing::warn!(
            socket = %path.display(),
            mode = %format!("{:o}", server.socket_mode),
            "the socket is root:root and admits no other user: the web server (www-data) cannot connect and answers 502; set [server] socket_group = \"www-data\""
        );
    }
}

/// Switch to `run_as` for good: supplementary groups, group, then user (the order that
/// leaves no way back). Without `run_as`, warn when running as root. Call after the
/// listening socket is bound and before serving; applies to every thread.
pub fn drop_to(run_as: Option<&RunAs>) -> anyhow::Result<()> {
    let root = Uid::effective().is_root();
    let Some(run_as) = run_as else {
        if root {
            tracing::warn!(
                "serving as root: set [server] user (and group) so requests and reply programs run unprivileged"
            );
        }
        return Ok(());
    };
    if Uid::effective().as_raw() == run_as.uid && Gid::effective().as_raw() == run_as.gid {
        return Ok(()); // already that user (a service manager switched for us)
    }
    if !root {
        anyhow::bail!(
            "[server] user = {:?}: switching users needs root (this process runs as uid {})",
            run_as.user,
            Uid::effective()
        );
    }
    let gid = Gid::from_raw(run_as.gid);
    nix::unistd::setgroups(&[gid]).map_err(|e| anyhow::anyhow!("setgroups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| anyhow::anyhow!("setgid {gid}: {e}"))?;
    nix::unistd::setuid(Uid::from_raw(run_as.uid))
        .map_err(|e| anyhow::anyhow!("setuid {}: {e}", run_as.uid))?;
    // Make sure there is no way back.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        anyhow::bail!(
            "could still become root after switching to {:?}",
            run_as.user
        );
    }
    tracing::info!(user = %run_as.user, uid = run_as.uid, gid = run_as.gid, "switched user");
    Ok(())
}
