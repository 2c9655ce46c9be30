//! Data directories and files that hold secrets and prompts: directories `0700`, files `0600`.
//!
//! Keys, request bodies kept for audits, receipts and chain state live in the data directories
//! of the gateway, node, ledger and devnet. They are created private, and a directory or file
//! found looser on start (made by an older version, or by hand) is tightened, with a warning.
//! On non-Unix systems these are no-ops.

use std::path::Path;

/// Creates `dir` (and its parents) if missing, and makes `dir` itself `0700`.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    tighten(dir, 0o700)
}

/// Makes `path` a private file: created empty with mode `0600` if missing (so that a database
/// opened on it afterwards, and SQLite's `-wal`/`-shm` files, which copy its mode, are never
/// readable by others, not even for a moment), tightened to `0600` if looser.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    tighten(path, 0o600)
}

/// Writes `contents` to `path` (replacing what it held), the file `0600` from the first byte.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    private_file(path)?;
    std::fs::write(path, contents)
}

/// Makes `dir` `0700` and every regular file directly inside it `0600`.
pub fn private_tree(dir: &Path) -> std::io::Result<()> {
    private_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            tighten(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let now = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if now & !mode != 0 {
        tracing_free_warn(path, now, mode);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// This crate does not log; the warning goes to standard error once per tightened path.
#[cfg(unix)]
fn tracing_free_warn(path: &Path, was: u32, now: u32) {
    eprintln!(
        "warning: {} was mode {was:o}; tightened to {now:o} (it holds keys or prompts)",
        path.display()
    );
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_directories_are_created_private_and_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join("x.db");
        std::fs::write(&f, b"secret").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_tree(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&f), 0o600);
        // A missing file is created private and empty; a stricter mode is left alone.
        let new = dir.join("new.redb");
        private_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        assert_eq!(std::fs::metadata(&new).unwrap().len(), 0);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o400);
        assert_eq!(std::fs::read(&f).unwrap(), b"secret");
        let w = dir.join("cursor");
        write_private(&w, "41").unwrap();
        write_private(&w, "42").unwrap();
        assert_eq!(
            (mode(&w), std::fs::read_to_string(&w).unwrap().as_str()),
            (0o600, "42")
        );
    }
}
