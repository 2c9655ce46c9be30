//! File modes of the node's data: its directory holds the node key, the receipts and the
//! confidential requests kept for audits, so it is created `0700` and its files `0600`, and
//! both are tightened when found looser (a directory made by an older version, a umask of
//! `022`). Unix only; elsewhere these are no-ops.

use std::io;
use std::path::Path;

/// Mode of the node's data directory: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files in it: owner read/write only.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its missing parents) and sets it to [`DIR_MODE`] if it is looser.
/// Parents created on the way keep the umask's mode: only the data directory is the node's.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tighten(dir, DIR_MODE)
}

/// Sets an existing file to [`FILE_MODE`] if it is looser; a missing file is not an error
/// (it is created later, then tightened).
pub fn private_file(file: &Path) -> io::Result<()> {
    match tighten(file, FILE_MODE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates `file` empty with [`FILE_MODE`] if it does not exist (so it is never readable by
/// others, not even between its creation and a later tightening), then tightens it.
pub fn private_new_file(file: &Path) -> io::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(FILE_MODE);
    }
    match open.open(file) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    private_file(file)
}

/// Tightens every regular file directly inside `dir` (node.redb, the keys) to [`FILE_MODE`].
pub fn private_files_in(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            private_file(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes the permission bits `mode` does not allow (never adds any).
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    let current = meta.permissions().mode() & 0o7777;
    let wanted = current & mode;
    if wanted != current {
        tracing::warn!(path = %path.display(), from = format!("{current:o}"), to = format!("{wanted:o}"), "tightening the mode of the node's data");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// The data directory is created 0700; a 0755 directory and a 0644 database found at
    /// start are tightened to 0700 and 0600; a stricter file is left as it is.
    #[test]
    fn node_data_is_private_and_tightened_on_start() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/node-data");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let loose = root.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = loose.join("node.redb");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = loose.join("node.key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        private_dir(&loose).unwrap();
        private_files_in(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&key), 0o400, "never loosened");
        private_file(&loose.join("not-yet")).unwrap();
        let fresh = loose.join("fresh.redb");
        private_new_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o666)).unwrap();
        private_new_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
